"""The slot ledger of remote inference servers, shared by every bot process on one PostgreSQL
database (the `SlotLedger` protocol of models.engines, met structurally).

A request holds its slot through an advisory lock per (server, slot) for as long as it runs,
so two processes never send two requests to one slot; `engine_slots` records, under that lock,
which conversation each slot served last, so a request reuses the cells of its own
conversation only (`SlotClaim.cached`). A process that dies releases its slots with its lock
connection; the recorded owner stays, which is right: the slot's cells still hold that prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from models.engines import SlotClaim
from storage.advisory import AdvisoryLocks, slot_lock
from storage.repositories._rows import NO_SYNC, utc_now
from storage.tables import EngineSlot

SLOT_POLL = 0.05  # seconds between looks for a free slot when all are busy
_NEVER = datetime.min.replace(tzinfo=utc_now().tzinfo)


class PostgresSlotLedger:
    def __init__(self, engine: AsyncEngine, *, poll: float = SLOT_POLL) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._locks = AdvisoryLocks(engine)
        self._poll = poll
        # Advisory locks are re-entrant on their connection: the slots this process holds
        # are kept out of its own tries here.
        self._held: set[tuple[str, int]] = set()

    async def open(self) -> None:
        await self._locks.open()

    async def close(self) -> None:
        await self._locks.close()

    @contextlib.asynccontextmanager
    async def claim(self, server: str, slots: int, key: str) -> AsyncIterator[SlotClaim]:
        """Wait for a free slot of `server`: the one `key` used last if it is free, else the
        least recently used (never used ones first); hold it until exit."""
        while True:
            async with self._sessions() as session:
                for slot in await self._preference(session, server, slots, key):
                    if not await self._try(server, slot):
                        continue  # a request (of any process) runs there
                    try:
                        cached = await self._take(session, server, slot, key)
                    except BaseException:
                        await self._free(server, slot)
                        raise
                    break
                else:
                    slot = -1
            if slot >= 0:
                break
            await asyncio.sleep(self._poll)
        try:
            yield SlotClaim(slot=slot, cached=cached)
        finally:
            await asyncio.shield(self._free(server, slot))

    async def _try(self, server: str, slot: int) -> bool:
        if (server, slot) in self._held:
            return False
        self._held.add((server, slot))  # before the await: another task here skips it
        try:
            if await self._locks.try_lock(slot_lock(server, slot)):
                return True
        except BaseException:
            self._held.discard((server, slot))
            raise
        self._held.discard((server, slot))
        return False

    async def _free(self, server: str, slot: int) -> None:
        try:
            await self._locks.unlock(slot_lock(server, slot))
        finally:
            self._held.discard((server, slot))

    async def release_owner(self, key: str) -> list[tuple[str, int]]:
        """Forget `key` as an owner everywhere; returns the (server, slot) pairs it owned."""
        async with self._sessions() as session:
            rows = await session.execute(
                update(EngineSlot)
                .where(EngineSlot.owner == key)
                .values(owner=None, updated_at=utc_now())
                .returning(EngineSlot.server, EngineSlot.slot)
                .execution_options(**NO_SYNC)
            )
            owned = [(server, slot) for server, slot in rows.all()]
            await session.commit()
        return sorted(owned)

    async def _preference(
        self, session: AsyncSession, server: str, slots: int, key: str
    ) -> list[int]:
        rows = await session.execute(
            select(EngineSlot.slot, EngineSlot.owner, EngineSlot.updated_at).where(
                EngineSlot.server == server, EngineSlot.slot < slots
            )
        )
        await session.commit()
        known = {slot: (owner, used) for slot, owner, used in rows.all()}

        def rank(slot: int) -> tuple[int, datetime, int]:
            owner, used = known.get(slot, (None, _NEVER))
            return (0 if owner == key else 1, used, slot)

        return sorted(range(slots), key=rank)

    async def _take(self, session: AsyncSession, server: str, slot: int, key: str) -> bool:
        """Under the slot's lock: was `key` its last owner? Record `key` as the owner now."""
        owner = await session.scalar(
            select(EngineSlot.owner).where(EngineSlot.server == server, EngineSlot.slot == slot)
        )
        stmt = postgresql.insert(EngineSlot).values(
            server=server, slot=slot, owner=key, updated_at=utc_now()
        )
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=["server", "slot"],
                set_={"owner": key, "updated_at": stmt.excluded.updated_at},
            )
        )
        await session.commit()
        return owner == key
