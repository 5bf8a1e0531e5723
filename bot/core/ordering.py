"""Updates of one conversation (and of one user) are handled in the order Telegram numbered
them.

aiogram handles every update as its own task, and those tasks interleave at each `await`:
three messages sent back to back could be stored as 1, 3, 2. A ticket is taken for each update
of a conversation before its first `await`, in arrival order, and a handler that must not
overtake waits for every earlier ticket of that conversation to be released first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass


class Ticket:
    """An update's place in its conversation's line."""

    def __init__(self, owner: TurnOrder, key: str, before: Ticket | None) -> None:
        self._owner = owner
        self._key = key
        self._before = before
        self._released = asyncio.Event()
        self._on_release: list[Callable[[], None]] = []

    async def wait(self) -> None:
        """Until every earlier update of the conversation has released its ticket."""
        before = self._before
        while before is not None:
            await before._released.wait()
            before = before._before
        self._before = None

    def release(self) -> None:
        """Later updates may go ahead; idempotent."""
        self._released.set()
        self._owner._released(self._key, self)
        callbacks, self._on_release = self._on_release, []
        for callback in callbacks:
            callback()

    def on_release(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the ticket is released (at once if it already is)."""
        if self._released.is_set():
            callback()
        else:
            self._on_release.append(callback)

    @property
    def released(self) -> bool:
        return self._released.is_set()


class TurnOrder:
    def __init__(self) -> None:
        self._last: dict[str, Ticket] = {}

    def take(self, key: str) -> Ticket:
        """Must be called before the handling task's first `await`."""
        before = self._last.get(key)
        # Released tickets hold nobody up: link to the first one that still does.
        while before is not None and before.released:
            before = before._before
        ticket = Ticket(self, key, before)
        self._last[key] = ticket
        return ticket

    def _released(self, key: str, ticket: Ticket) -> None:
        if self._last.get(key) is ticket and ticket._before is None:
            del self._last[key]


@dataclass(frozen=True)
class Place:
    """An update's place in its conversation's line and in its user's line (all chats)."""

    conversation: Ticket
    user: Ticket

    async def wait(self) -> None:
        """Until the earlier updates of this conversation have gone ahead."""
        await self.conversation.wait()

    async def wait_for_user(self) -> None:
        """Until the earlier updates of this user, in any chat, have gone ahead (/forget)."""
        await self.user.wait()

    def release(self) -> None:
        self.conversation.release()
        self.user.release()


def take_place(order: TurnOrder, user_id: int, chat_id: int) -> Place:
    """Must be called before the handling task's first `await`."""
    return Place(order.take(f"{user_id}:{chat_id}"), order.take(f"user:{user_id}"))
