"""The in-process `SlotLedger`: which conversation each slot of each server last served.

A request may reuse a slot's cached tokens (llama-server `cache_prompt`) only when that slot's
last request was its own conversation's; otherwise the slot holds another conversation's
tokens, and reusing a shared prefix of them would reveal it through timing. Waiting for a free
slot is the queue: waiters are served first come, first served.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from models.engines import SlotClaim


@dataclass
class _Slot:
    owner: str | None = None
    busy: bool = False
    last_used: int = 0


class InProcessSlotLedger:
    """For one bot process; several processes sharing servers need the database's ledger."""

    def __init__(self) -> None:
        self._servers: dict[str, list[_Slot]] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self._clock = itertools.count(1)

    def _slots(self, server: str, slots: int) -> list[_Slot]:
        table = self._servers.setdefault(server, [])
        table.extend(_Slot() for _ in range(slots - len(table)))
        return table[:slots]

    def _pick(self, server: str, slots: int, key: str) -> int | None:
        table = self._slots(server, slots)
        free = [i for i, s in enumerate(table) if not s.busy]
        if not free:
            return None
        own = [i for i in free if table[i].owner == key]
        return own[0] if own else min(free, key=lambda i: table[i].last_used)

    @contextlib.asynccontextmanager
    async def claim(self, server: str, slots: int, key: str) -> AsyncIterator[SlotClaim]:
        queue = self._waiters.setdefault(server, deque())
        index = None if queue else self._pick(server, slots, key)
        if index is None:
            ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            queue.append(ticket)
            try:
                while True:
                    await ticket
                    index = self._pick(server, slots, key)
                    if index is not None:
                        break
                    ticket = asyncio.get_running_loop().create_future()
                    queue.appendleft(ticket)
            except BaseException:
                if ticket in queue:
                    queue.remove(ticket)
                elif ticket.done() and not ticket.cancelled():
                    self._wake(server)  # the wake-up it took is handed on
                raise
        slot = self._servers[server][index]
        cached = slot.owner == key
        slot.owner, slot.busy, slot.last_used = key, True, next(self._clock)
        try:
            yield SlotClaim(index, cached)
        finally:
            slot.busy = False
            slot.last_used = next(self._clock)
            self._wake(server)

    def _wake(self, server: str) -> None:
        queue = self._waiters.get(server)
        while queue:
            ticket = queue.popleft()
            if not ticket.done():
                ticket.set_result(None)
                return

    def waiting(self, server: str) -> int:
        """Requests waiting for a slot of `server`."""
        return len(self._waiters.get(server, ()))

    async def release_owner(self, key: str) -> list[tuple[str, int]]:
        owned: list[tuple[str, int]] = []
        for server, table in self._servers.items():
            for index, slot in enumerate(table):
                if slot.owner == key:
                    slot.owner = None
                    owned.append((server, index))
        return owned
