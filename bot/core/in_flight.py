"""The replies between a user's stored message and the stored answer, and what may stop them."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from models.engines import GenerationHandle


class Cut(enum.Enum):
    """Why a reply ends early."""

    STOPPED = "stopped"  # the user asked (/stop)
    FORGOTTEN = "forgotten"  # /forget: nothing of it may be stored or shown any more
    SHUTDOWN = "shutdown"  # the bot is going down


class ActiveReply:
    def __init__(self, key: str, user_id: int) -> None:
        self.key = key
        self.user_id = user_id
        self.chat_id = 0  # set by the chat service; the key names the chat as well
        self.cut: Cut | None = None
        self.generation: GenerationHandle | None = None
        self.message_id: int | None = None  # the stored message it answers
        self.streamed = ""  # the reply so far

    @property
    def started(self) -> bool:
        return self.generation is not None and self.generation.started.is_set()

    @property
    def forgotten(self) -> bool:
        return self.cut is Cut.FORGOTTEN

    def cancel(self, why: Cut) -> None:
        # /forget outranks everything; a stop does not turn a shutdown into "stopped".
        if self.cut is None or why is Cut.FORGOTTEN:
            self.cut = why
        if self.generation is not None:
            self.generation.cancel()


class RepliesInFlight:
    """Replies per conversation, the locks that keep them apart, and shutdown."""

    def __init__(self) -> None:
        self._active: dict[str, list[ActiveReply]] = defaultdict(list)
        # One reply at a time per conversation, so each prompt sees the previous answer.
        self._lines: dict[str, deque[asyncio.Future[None]]] = defaultdict(deque)
        # Storing a user's rows and /forget never interleave: nothing is written after it.
        self._user_locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._idle = asyncio.Event()
        self._idle.set()
        self._deliveries = 0
        self._told_waiting: set[str] = set()
        self._closed = asyncio.Event()

    @property
    def count(self) -> int:
        """Messages accepted and not answered yet, running or waiting."""
        return sum(len(replies) for replies in self._active.values())

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    def keys_of_user(self, user_id: int) -> set[str]:
        return {key for key, replies in self._active.items() if replies[0].user_id == user_id}

    @contextlib.contextmanager
    def register(self, key: str, user_id: int) -> Iterator[ActiveReply]:
        reply = ActiveReply(key, user_id)
        self._active[key].append(reply)
        self._idle.clear()
        try:
            yield reply
        finally:
            self._active[key].remove(reply)
            if not self._active[key]:
                del self._active[key]
            self._maybe_idle()

    @contextlib.contextmanager
    def delivering(self) -> Iterator[None]:
        """A front end showing an outcome: shutdown waits for it as for a running reply."""
        self._deliveries += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._deliveries -= 1
            self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self._active and not self._deliveries:
            self._idle.set()

    @property
    def closing(self) -> bool:
        return self._closed.is_set()

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[bool]:
        """The conversation's turn, first come first served: True once it is this reply's,
        False as soon as the bot shuts down instead (a reply still waiting is then kept for
        the restart). The place in line is taken before the first await."""
        line = self._lines[key]
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line.append(mine)
        if line[0] is mine:
            mine.set_result(None)
        closed = asyncio.ensure_future(self._closed.wait())
        waits: set[asyncio.Future[Any]] = {mine, closed}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            yield mine.done() and not self.closing
        finally:
            closed.cancel()
            was_first = line[0] is mine
            line.remove(mine)
            if was_first and line:
                line[0].set_result(None)
            if not line:
                self._lines.pop(key, None)

    def user_lock(self, user_id: int) -> asyncio.Lock:
        return self._user_locks[user_id]

    def cancel(self, key: str, why: Cut, up_to: int | None = None) -> bool:
        """`up_to`: only replies to messages stored up to that id (a stop from another
        process reaches replies that were running or waiting when it was asked)."""
        replies = self._active.get(key, [])
        if up_to is not None:
            replies = [r for r in replies if r.message_id is not None and r.message_id <= up_to]
        for reply in replies:
            reply.cancel(why)
        return bool(replies)

    def close(self) -> list[int]:
        """Take no more work: running replies stop. Returns the stored messages whose replies
        had not started: they are kept for the restart."""
        self._closed.set()
        waiting = []
        for replies in list(self._active.values()):
            for reply in replies:
                if reply.message_id is not None and not reply.started:
                    waiting.append(reply.message_id)
                reply.cancel(Cut.SHUTDOWN)
        return waiting

    def first_to_wait(self, key: str) -> bool:
        """True once per conversation: its user is told about the restart one time only."""
        if key in self._told_waiting:
            return False
        self._told_waiting.add(key)
        return True

    async def wait_idle(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True
