"""What several bot processes on one database tell each other through it: the updates taken
on, the Telegram messages stored, the stops asked for, and the rows still being answered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.records import FINAL_STATUSES, MessageRecord, UserRecord
from storage.repositories._rows import NO_SYNC, USER_COLUMNS, upsert_insert, user_record, utc_now
from storage.repositories.messages import MessageRepository
from storage.tables import (
    Conversation,
    Message,
    ProcessedUpdate,
    ReceivedMessage,
    StopRequest,
    User,
)
from storage.validation import check_id

# A final reply its front end has not sent yet (a `pending` one is still being written).
UNDELIVERED = and_(Message.delivered.is_(False), Message.status.in_(FINAL_STATUSES))


@dataclass(frozen=True, slots=True)
class StopRecord:
    id: int
    user_id: int
    chat_id: int
    up_to_message_id: int  # replies to this message and earlier ones end


class UpdateRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def record(self, update_id: int) -> bool:
        """True the first time an update id is seen; the key decides, whoever inserts first."""
        stmt = (
            upsert_insert(self._session, ProcessedUpdate)
            .values(update_id=update_id, seen_at=utc_now())
            .on_conflict_do_nothing(index_elements=["update_id"])
            .returning(ProcessedUpdate.update_id)
        )
        return (await self._session.execute(stmt)).scalar_one_or_none() is not None

    async def seen(self, update_id: int) -> bool:
        found = await self._session.get(ProcessedUpdate, update_id)
        return found is not None

    async def prune(self, older_than: timedelta) -> None:
        await self._session.execute(
            delete(ProcessedUpdate)
            .where(ProcessedUpdate.seen_at < utc_now() - older_than)
            .execution_options(**NO_SYNC)
        )


class ReceivedRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def record(self, chat_id: int, telegram_message_id: int, message_id: int) -> bool:
        """Tie a stored message to the Telegram message it came from; False if that Telegram
        message was stored already (by this process or another)."""
        stmt = (
            upsert_insert(self._session, ReceivedMessage)
            .values(
                chat_id=chat_id,
                telegram_message_id=check_id(telegram_message_id, "Telegram message id"),
                message_id=check_id(message_id, "message id"),
            )
            .on_conflict_do_nothing(index_elements=["chat_id", "telegram_message_id"])
            .returning(ReceivedMessage.message_id)
        )
        return (await self._session.execute(stmt)).scalar_one_or_none() is not None


class StopRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, user_id: int, chat_id: int) -> int:
        """A stop of every reply to a message stored so far; returns its id."""
        up_to = await self._session.scalar(select(func.max(Message.id))) or 0
        stop = StopRequest(
            user_id=user_id, chat_id=chat_id, up_to_message_id=up_to, requested_at=utc_now()
        )
        self._session.add(stop)
        await self._session.flush()
        return stop.id

    async def last_id(self) -> int:
        return await self._session.scalar(select(func.max(StopRequest.id))) or 0

    async def since(self, after_id: int) -> list[StopRecord]:
        rows = await self._session.execute(
            select(
                StopRequest.id,
                StopRequest.user_id,
                StopRequest.chat_id,
                StopRequest.up_to_message_id,
            )
            .where(StopRequest.id > after_id)
            .order_by(StopRequest.id)
        )
        return [StopRecord(*row) for row in rows.all()]

    async def prune(self, older_than: timedelta) -> None:
        await self._session.execute(
            delete(StopRequest)
            .where(StopRequest.requested_at < utc_now() - older_than)
            .execution_options(**NO_SYNC)
        )


class PendingRepository:
    """Rows still being answered: user messages without a reply yet, replies being written."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def status(self, message_id: int) -> str | None:
        return await self._session.scalar(select(Message.status).where(Message.id == message_id))

    async def earlier_questions(self, user_id: int, chat_id: int, message_id: int) -> list[int]:
        """The user's messages in that chat stored before `message_id` and not answered yet,
        oldest first (all conversations of the chat: a /new does not skip the line)."""
        stmt = (
            select(Message.id)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(
                Conversation.user_id == user_id,
                Conversation.chat_id == chat_id,
                Message.role == "user",
                Message.status == "pending",
                Message.id < message_id,
            )
            .order_by(Message.id)
        )
        return list((await self._session.scalars(stmt)).all())

    async def earlier_replies(self, user_id: int, chat_id: int, message_id: int) -> list[int]:
        """The replies in that chat to messages before `message_id` (or, with no recorded
        question, opened before it) still being written or not yet sent to the chat."""
        stmt = (
            select(Message.id)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(
                Conversation.user_id == user_id,
                Conversation.chat_id == chat_id,
                Message.role == "bot",
                or_(Message.status == "pending", UNDELIVERED),
                or_(
                    Message.reply_to < message_id,
                    and_(Message.reply_to.is_(None), Message.id < message_id),
                ),
            )
            .order_by(Message.id)
        )
        return list((await self._session.scalars(stmt)).all())

    async def in_chat(self, user_id: int, chat_id: int) -> int:
        """Rows of the user in that chat waiting for or being written as a reply."""
        stmt = (
            select(func.count())
            .select_from(Message)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(
                Conversation.user_id == user_id,
                Conversation.chat_id == chat_id,
                Message.status == "pending",
            )
        )
        return int(await self._session.scalar(stmt) or 0)

    async def replies(self) -> list[int]:
        stmt = select(Message.id).where(Message.role == "bot", Message.status == "pending")
        return list((await self._session.scalars(stmt.order_by(Message.id))).all())

    async def undelivered(self) -> list[int]:
        """Replies still being written or stored final and not sent to their chat yet."""
        stmt = select(Message.id).where(
            Message.role == "bot", or_(Message.status == "pending", UNDELIVERED)
        )
        return list((await self._session.scalars(stmt.order_by(Message.id))).all())

    async def undelivered_final(self) -> list[int]:
        stmt = select(Message.id).where(Message.role == "bot", UNDELIVERED)
        return list((await self._session.scalars(stmt.order_by(Message.id))).all())

    async def questions(self) -> list[int]:
        stmt = select(Message.id).where(Message.role == "user", Message.status == "pending")
        return list((await self._session.scalars(stmt.order_by(Message.id))).all())

    async def with_chats(
        self, message_ids: Sequence[int]
    ) -> list[tuple[MessageRecord, UserRecord, int]]:
        """Those of the rows that still exist, oldest first, with their user and chat id."""
        if not message_ids:
            return []
        stmt = (
            select(Message.id, Conversation.chat_id, *USER_COLUMNS)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .join(User, User.id == Conversation.user_id)
            .where(Message.id.in_(message_ids))
            .order_by(Message.id)
        )
        found = []
        for row in (await self._session.execute(stmt)).all():
            record = await MessageRepository(self._session).get(row[0])
            if record is not None:
                found.append((record, user_record(row[2:]), row[1]))
        return found

    async def keep_as_partial(self, reply_ids: Sequence[int]) -> list[int]:
        """Replies whose process is gone: kept as written so far, if still `pending`; returns
        the ids that were."""
        if not reply_ids:
            return []
        stmt = (
            update(Message)
            .where(Message.id.in_(reply_ids), Message.status == "pending")
            .values(status="partial")
            .returning(Message.id)
            .execution_options(**NO_SYNC)
        )
        return list((await self._session.scalars(stmt)).all())

    async def complete_question(self, message_id: int) -> None:
        """A user message being answered (or given up on) is no longer waiting."""
        await self._session.execute(
            update(Message)
            .where(Message.id == message_id, Message.status == "pending")
            .values(status="complete")
            .execution_options(**NO_SYNC)
        )
