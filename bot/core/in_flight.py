"""The replies between a user's stored message and the stored answer, and what may stop them."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import defaultdict
from collections.abc import Iterator

from models.runtime.engine import Generation


class Cut(enum.Enum):
    """Why a reply ends early."""

    STOPPED = "stopped"  # the user asked (/stop)
    FORGOTTEN = "forgotten"  # /forget: nothing of it may be stored or shown any more
    SHUTDOWN = "shutdown"  # the bot is going down


class ActiveReply:
    def __init__(self, key: str, user_id: int) -> None:
        self.key = key
        self.user_id = user_id
        self.cut: Cut | None = None
        self.generation: Generation | None = None
        self.streamed = ""  # the reply so far

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
        self._turn_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Storing a user's rows and /forget never interleave: nothing is written after it.
        self._user_locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._idle = asyncio.Event()
        self._idle.set()
        self._deliveries = 0
        self.closing = False

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
                self._turn_locks.pop(key, None)  # nobody waits on it any more
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

    def turn_lock(self, key: str) -> asyncio.Lock:
        return self._turn_locks[key]

    def user_lock(self, user_id: int) -> asyncio.Lock:
        return self._user_locks[user_id]

    def cancel(self, key: str, why: Cut) -> bool:
        replies = self._active.get(key, [])
        for reply in replies:
            reply.cancel(why)
        return bool(replies)

    def close(self) -> None:
        """Take no more work: running replies stop, waiting ones are kept for the restart."""
        self.closing = True
        for replies in list(self._active.values()):
            for reply in replies:
                reply.cancel(Cut.SHUTDOWN)

    async def wait_idle(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True
