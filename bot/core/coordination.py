"""How the replies of one bot process stay in step with those of other processes.

SQLite: `LocalCoordination`, one process only (today's behaviour; several processes on one
SQLite file are not supported: nothing here would keep them apart).

PostgreSQL: `SharedCoordination`, any number of processes on one database. What it guarantees:
- A user's messages in one chat are answered one at a time and in storage order (message id),
  whichever process stored them: a reply is generated only by the holder of the chat's
  conversation lock, and only for the oldest message of the chat still waiting (`pending`);
  when an older one waits, the process lets go and tries again. Nothing is skipped.
- A waiting message is claimed (an advisory lock on its row) by the process that stored it,
  from before its row is visible until its reply is opened. A waiting message whose claim is
  free belongs to a process that died or shut down: any live process adopts and answers it
  (`adopt_waiting`, run by the sweep). A message answered already is never answered again:
  the status is read again after the claim is taken.
- A reply row is claimed by its process from its opening until the front end has sent it to
  the chat (`ChatService.delivered`). A reply whose claim is free while it is `pending` or
  stored final but not delivered was left by a dead process: another process keeps it as
  written (`partial`) and sends it (`undelivered`, run by the sweep), never touching a live
  one. Until then the chat's next reply waits, so the chat sees its replies in order.
- /stop is written to the database; every process with replies polls it.
All locks are session-level advisory locks on one connection per process (storage.advisory),
so PostgreSQL itself releases them when a process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.core.update_once import SharedUpdates, UpdateTurn
from storage.advisory import AdvisoryLocks, LockKey, conversation_lock, row_lock
from storage.records import FINAL_STATUSES, MessageRecord, Status, UserRecord
from storage.repositories import MessageRepository
from storage.repositories.shared import (
    PendingRepository,
    ReceivedRepository,
    StopRecord,
    StopRepository,
    UpdateRepository,
)

logger = logging.getLogger(__name__)

LOCK_POLL = 0.05  # seconds between tries of a lock another process holds
UPDATES_KEPT = timedelta(days=1)  # Telegram gives up redelivering long before
STOPS_KEPT = timedelta(minutes=10)

Waiting = tuple[MessageRecord, UserRecord, int]


class Verdict(enum.Enum):
    GO = "go"  # this message is next: answer it now
    WAIT = "wait"  # an earlier message of the chat is still waiting: let go, try again
    ANSWERED = "answered"  # another process answered it already


class Coordination(Protocol):
    @property
    def shared(self) -> bool: ...

    @property
    def stored_status(self) -> Status:
        """The status a user's message is stored with."""
        ...

    @property
    def orphans_seen(self) -> asyncio.Event:
        """Set when a message left by a gone process holds up a reply: sweep now."""
        ...

    async def claim(self, row_id: int) -> None: ...

    async def release(self, row_id: int) -> None: ...

    def conversation(self, key: str) -> contextlib.AbstractAsyncContextManager[None]: ...

    async def verdict(
        self, session: AsyncSession, user_id: int, chat_id: int, message_id: int, fresh: bool
    ) -> Verdict: ...

    async def opened(self, session: AsyncSession, question_id: int) -> None:
        """A reply to `question_id` was opened (not committed yet)."""
        ...

    async def given_up(self, session: AsyncSession, question_id: int) -> None:
        """No reply will come for the question (stopped, failed): it waits no more."""
        ...

    async def received(
        self, session: AsyncSession, chat_id: int, telegram_id: int, message_id: int
    ) -> bool: ...

    async def keep_interrupted(self, session: AsyncSession) -> int: ...

    async def undelivered(self, session: AsyncSession) -> list[Waiting]:
        """The replies left unsent (the reply, its user, chat id), oldest first; with several
        processes, only those of gone processes, claimed for this one to send."""
        ...

    async def adopt_waiting(self, session: AsyncSession) -> list[Waiting]: ...

    def update_once(self, update_id: int) -> contextlib.AbstractAsyncContextManager[UpdateTurn]:
        """Hold the update while it is taken on; `UpdateTurn.first` is False for an update
        some process (this one included) has taken on already."""
        ...

    async def record_stop(self, session: AsyncSession, user_id: int, chat_id: int) -> bool: ...

    async def new_stops(self) -> list[StopRecord]: ...

    async def prune(self, session: AsyncSession) -> None: ...

    async def pause(self) -> None: ...

    async def close(self) -> None: ...


class LocalCoordination:
    """One process: the in-process lines (RepliesInFlight) are all there is."""

    def __init__(self) -> None:
        self._orphans = asyncio.Event()

    @property
    def shared(self) -> bool:
        return False

    @property
    def stored_status(self) -> Status:
        return "complete"

    @property
    def orphans_seen(self) -> asyncio.Event:
        return self._orphans

    async def claim(self, row_id: int) -> None:
        return None

    async def release(self, row_id: int) -> None:
        return None

    @contextlib.asynccontextmanager
    async def conversation(self, key: str) -> AsyncIterator[None]:
        yield

    async def verdict(
        self, session: AsyncSession, user_id: int, chat_id: int, message_id: int, fresh: bool
    ) -> Verdict:
        return Verdict.GO

    async def opened(self, session: AsyncSession, question_id: int) -> None:
        return None

    async def given_up(self, session: AsyncSession, question_id: int) -> None:
        return None

    async def received(
        self, session: AsyncSession, chat_id: int, telegram_id: int, message_id: int
    ) -> bool:
        return await ReceivedRepository(session).record(chat_id, telegram_id, message_id)

    async def keep_interrupted(self, session: AsyncSession) -> int:
        return await MessageRepository(session).mark_pending_as_partial()

    async def undelivered(self, session: AsyncSession) -> list[Waiting]:
        pending = PendingRepository(session)
        return await pending.with_chats(await pending.undelivered_final())

    async def adopt_waiting(self, session: AsyncSession) -> list[Waiting]:
        return await MessageRepository(session).unanswered()

    def update_once(self, update_id: int) -> contextlib.AbstractAsyncContextManager[UpdateTurn]:
        # Telegram re-sends after a restart: the stored message ids catch that.
        return contextlib.nullcontext(UpdateTurn(first=True))

    async def record_stop(self, session: AsyncSession, user_id: int, chat_id: int) -> bool:
        return False

    async def new_stops(self) -> list[StopRecord]:
        return []

    async def prune(self, session: AsyncSession) -> None:
        return None

    async def pause(self) -> None:
        await asyncio.sleep(0)

    async def close(self) -> None:
        return None


class SharedCoordination(LocalCoordination):
    """Several processes on one PostgreSQL database; see the module's description."""

    def __init__(
        self, locks: AdvisoryLocks, sessions: async_sessionmaker[AsyncSession], poll: float
    ) -> None:
        super().__init__()
        self._locks = locks
        self._sessions = sessions
        self._poll = poll
        self._held: set[int] = set()  # rows this process claimed
        self._last_stop = 0
        self._updates = SharedUpdates(locks, self._try, sessions)

    @property
    def shared(self) -> bool:
        return True

    @property
    def stored_status(self) -> Status:
        return "pending"  # waiting until a reply is opened: the claim says who answers it

    async def open(self) -> None:
        await self._locks.open()
        async with self._sessions() as session:
            self._last_stop = await StopRepository(session).last_id()

    async def close(self) -> None:
        await self._locks.close()
        self._held.clear()

    async def abandon(self) -> None:
        """As if the process were killed: every lock goes at once (tests)."""
        await self._locks.abandon()
        self._held.clear()

    def holds(self, row_id: int) -> bool:
        return row_id in self._held

    async def claim(self, row_id: int) -> None:
        """A row this process just inserted, before its commit: nobody else can have it."""
        if not await self._try(row_lock(row_id)):
            raise RuntimeError(f"row {row_id} was claimed before it was committed")
        self._held.add(row_id)

    async def release(self, row_id: int) -> None:
        if row_id in self._held:
            self._held.discard(row_id)
            await self._locks.unlock(row_lock(row_id))

    @contextlib.asynccontextmanager
    async def conversation(self, key: str) -> AsyncIterator[None]:
        lock = conversation_lock(key)
        while not await self._try(lock):  # noqa: ASYNC110 - another process holds it
            await asyncio.sleep(LOCK_POLL)
        try:
            yield
        finally:
            await asyncio.shield(self._locks.unlock(lock))

    async def verdict(
        self, session: AsyncSession, user_id: int, chat_id: int, message_id: int, fresh: bool
    ) -> Verdict:
        pending = PendingRepository(session)
        if fresh and await pending.status(message_id) != "pending":
            await session.commit()  # ends the read: no transaction idles while we wait
            return Verdict.ANSWERED
        earlier = await pending.earlier_questions(user_id, chat_id, message_id)
        # Under the chat's lock no live process writes a reply here: one still `pending` was
        # cut by a kill. It, and a reply stored but not sent yet (by a live process now, or
        # by a dead one: see `undelivered`), reaches the chat before the next one begins.
        cut = await pending.earlier_replies(user_id, chat_id, message_id)
        await session.commit()
        if not earlier and not cut:
            return Verdict.GO
        first = min(earlier + cut)
        if first not in self._held and await self._free(row_lock(first)):
            self.orphans_seen.set()  # its process is gone: adopt it now, not at the next sweep
        return Verdict.WAIT

    async def opened(self, session: AsyncSession, question_id: int) -> None:
        await PendingRepository(session).complete_question(question_id)

    async def given_up(self, session: AsyncSession, question_id: int) -> None:
        await PendingRepository(session).complete_question(question_id)
        await session.commit()

    async def keep_interrupted(self, session: AsyncSession) -> int:
        """Only replies whose process is gone (their claim is free); a live one is running."""
        pending = PendingRepository(session)
        free = await self._claim_free(await pending.replies())
        try:
            return len(await pending.keep_as_partial(free))
        finally:
            await session.commit()
            for reply_id in free:
                await self.release(reply_id)

    async def undelivered(self, session: AsyncSession) -> list[Waiting]:
        """The replies gone processes left unsent, claimed by this one until it has sent them
        (`ChatService.delivered`): one cut while written is kept as `partial` first. While
        one is unsent the chat's next reply waits (see `verdict`), so it is shown first."""
        pending = PendingRepository(session)
        claimed = await self._claim_free(await pending.undelivered())
        # Read after the claims: one sent (or kept and sent) meanwhile is left out.
        cut = set(await pending.keep_as_partial(claimed))
        found = [
            item
            for item in await pending.with_chats(claimed)
            if item[0].id in cut or (not item[0].delivered and item[0].status in FINAL_STATUSES)
        ]
        await session.commit()
        for reply_id in set(claimed) - {item[0].id for item in found}:
            await self.release(reply_id)
        return found

    async def adopt_waiting(self, session: AsyncSession) -> list[Waiting]:
        """Claim the waiting messages nobody holds and return them, oldest first: this
        process answers them now."""
        claimed = await self._claim_free(await PendingRepository(session).questions())
        # Read after the claims: a message answered meanwhile is no longer `pending`.
        waiting = await MessageRepository(session).unanswered()
        await session.commit()
        adopted = [item for item in waiting if item[0].id in claimed]
        for message_id in set(claimed) - {item[0].id for item in adopted}:
            await self.release(message_id)
        return adopted

    def update_once(self, update_id: int) -> contextlib.AbstractAsyncContextManager[UpdateTurn]:
        return self._updates.update_once(update_id)

    async def _claim_free(self, row_ids: list[int]) -> list[int]:
        """Claim those of the rows nobody holds (their process is gone)."""
        claimed = []
        for row_id in row_ids:
            if row_id not in self._held and await self._try(row_lock(row_id)):
                self._held.add(row_id)
                claimed.append(row_id)
        return claimed

    async def record_stop(self, session: AsyncSession, user_id: int, chat_id: int) -> bool:
        """Write the stop for the other processes; True if a reply there runs or waits."""
        await StopRepository(session).add(user_id, chat_id)
        busy = await PendingRepository(session).in_chat(user_id, chat_id)
        await session.commit()
        return busy > 0

    async def new_stops(self) -> list[StopRecord]:
        async with self._sessions() as session:
            stops = await StopRepository(session).since(self._last_stop)
        if stops:
            self._last_stop = stops[-1].id
        return stops

    async def prune(self, session: AsyncSession) -> None:
        await UpdateRepository(session).prune(UPDATES_KEPT)
        await StopRepository(session).prune(STOPS_KEPT)
        await session.commit()

    async def pause(self) -> None:
        await asyncio.sleep(self._poll)

    async def _free(self, key: LockKey) -> bool:
        if not await self._try(key):
            return False
        await self._locks.unlock(key)
        return True

    async def _try(self, key: LockKey) -> bool:
        # A cancel must not lose a lock the server granted: the try runs to its end.
        attempt = asyncio.ensure_future(self._locks.try_lock(key))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            if await attempt:
                await self._locks.unlock(key)
            raise
