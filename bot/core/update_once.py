"""An update Telegram delivers twice (to two bot processes, or again after a restart) is taken
on once. Its id is recorded once the update is accepted (its message stored, or its handling
done), under a lock on the id taken before the look-up and let go right after the record:
a second delivery waits for the first to be accepted and is then dropped; a process that dies
before accepting leaves the update to the next delivery instead of losing it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.advisory import AdvisoryLocks, LockKey, update_lock
from storage.repositories.shared import UpdateRepository

LOCK_POLL = 0.05  # seconds between tries of a lock another delivery holds
UPDATE_WAIT = 30.0  # seconds a second delivery waits for the first to be accepted


class UpdateTurn:
    """One delivery of an update being taken on."""

    def __init__(
        self,
        *,
        first: bool,
        record: Callable[[], Awaitable[None]] | None = None,
        release: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.first = first
        self._record = record
        self._release = release
        self._closing: asyncio.Task[None] | None = None

    def accepted(self) -> None:
        """The update is safe (its message stored): record it and let go of it. Called from
        the update's ticket, which is synchronous; the work runs right after."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(record=self.first))

    async def settle(self) -> None:
        """Handled: accepted now if it was not before."""
        self.accepted()
        await self.closed()

    async def abandon(self) -> None:
        """Failed before it was accepted: let go without recording, for the next delivery."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(record=False))
        await self.closed()

    async def closed(self) -> None:
        if self._closing is not None:
            await asyncio.shield(self._closing)

    async def _close(self, *, record: bool) -> None:
        try:
            if record and self._record is not None:
                await self._record()
        finally:
            if self._release is not None:
                await self._release()


class SharedUpdates:
    """`update_once` across the bot processes of one PostgreSQL database."""

    def __init__(
        self,
        locks: AdvisoryLocks,
        try_lock: Callable[[LockKey], Awaitable[bool]],
        sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        self._locks = locks
        self._try = try_lock  # one that a cancel cannot make lose a granted lock
        self._sessions = sessions
        # PostgreSQL's advisory locks are re-entrant on their connection: a second delivery
        # to this same process is kept apart here.
        self._in_flight: set[int] = set()

    @contextlib.asynccontextmanager
    async def update_once(self, update_id: int) -> AsyncIterator[UpdateTurn]:
        lock = update_lock(update_id)
        give_up = asyncio.get_running_loop().time() + UPDATE_WAIT
        while update_id in self._in_flight or not await self._try(lock):
            if asyncio.get_running_loop().time() > give_up:
                # Raised before anything is kept: not acknowledged, Telegram delivers it again.
                raise TimeoutError(f"update {update_id} is being taken on elsewhere")
            await asyncio.sleep(LOCK_POLL)
        self._in_flight.add(update_id)

        async def release() -> None:
            self._in_flight.discard(update_id)
            await self._locks.unlock(lock)

        turn = UpdateTurn(first=True, release=release)
        try:
            async with self._sessions() as session:
                seen = await UpdateRepository(session).seen(update_id)
            turn = UpdateTurn(
                first=not seen, record=lambda: self._record(update_id), release=release
            )
        except BaseException:
            await turn.abandon()
            raise
        try:
            yield turn
        except BaseException:
            await turn.abandon()  # a record begun at acceptance goes in all the same
            raise
        await turn.settle()

    async def _record(self, update_id: int) -> None:
        async with self._sessions() as session:
            await UpdateRepository(session).record(update_id)
            await session.commit()
