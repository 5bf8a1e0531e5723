"""Conversations: a user has many in a chat, kept until deleted; exactly one of them is open
(`closed_at` is NULL): the one new messages go to. Switching closes it and reopens another."""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import StorageError
from storage.records import (
    ConversationRecord,
    ConversationSummary,
)
from storage.repositories._rows import (
    CONVERSATION_COLUMNS,
    NO_SYNC,
    conversation_record,
    upsert_insert,
    utc_now,
)
from storage.tables import Conversation, Message, TelegramMessage, User
from storage.validation import (
    check_id,
)


class ConversationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def current(self, user_id: int, chat_id: int) -> ConversationRecord:
        """The open conversation of this user in this chat, opened now if there is none."""
        user_id = check_id(user_id, "user id")
        chat_id = check_id(chat_id, "chat id")
        found = await self._open_one(user_id, chat_id)
        return found if found is not None else await self._start(user_id, chat_id)

    async def reset(self, user_id: int, chat_id: int) -> ConversationRecord:
        """Close the open conversation (it stays stored) and start a new one."""
        user_id = check_id(user_id, "user id")
        chat_id = check_id(chat_id, "chat id")
        stmt = (
            update(Conversation)
            .where(
                Conversation.user_id == user_id,
                Conversation.chat_id == chat_id,
                Conversation.closed_at.is_(None),
            )
            .values(closed_at=utc_now())
            .execution_options(**NO_SYNC)
        )
        await self._session.execute(stmt)
        return await self._start(user_id, chat_id)

    async def recent(self, user_id: int, chat_id: int, limit: int) -> list[ConversationSummary]:
        """The user's conversations in this chat that hold a message, last used first."""
        user_id = check_id(user_id, "user id")
        chat_id = check_id(chat_id, "chat id")
        last_id = func.max(Message.id)
        stmt = (
            select(
                Conversation.id,
                Conversation.closed_at,
                func.min(Message.id),
                func.max(Message.created_at),
            )
            .join(Message, Message.conversation_id == Conversation.id)
            .where(
                Conversation.user_id == user_id,
                Conversation.chat_id == chat_id,
                Message.role == "user",
            )
            .group_by(Conversation.id, Conversation.closed_at)
            .order_by(last_id.desc())
            .limit(limit)
        )
        rows = list(await self._session.execute(stmt))
        first_ids = [row[2] for row in rows]
        query = select(Message.id, Message.text).where(Message.id.in_(first_ids))
        texts: dict[int, str] = {}
        for message_id, text in await self._session.execute(query):
            texts[message_id] = text
        return [
            ConversationSummary(cid, texts[first], last_at, closed_at is None)
            for cid, closed_at, first, last_at in rows
        ]

    async def switch(self, user_id: int, chat_id: int, conversation_id: int) -> bool:
        """Make the user's conversation `conversation_id` in this chat the open one; False if
        it is not theirs (or no longer exists)."""
        target = await self.get(conversation_id)
        if target is None or (target.user_id, target.chat_id) != (user_id, chat_id):
            return False
        if target.closed_at is None:
            return True
        await self._session.execute(
            update(Conversation)
            .where(
                Conversation.user_id == user_id,
                Conversation.chat_id == chat_id,
                Conversation.closed_at.is_(None),
            )
            .values(closed_at=utc_now())
            .execution_options(**NO_SYNC)
        )
        await self._session.execute(
            update(Conversation)
            .where(Conversation.id == target.id)
            .values(closed_at=None)
            .execution_options(**NO_SYNC)
        )
        return True

    async def delete(self, user_id: int, chat_id: int, conversation_id: int) -> bool:
        """Delete one of the user's conversations with its messages; False if not theirs."""
        target = await self.get(conversation_id)
        if target is None or (target.user_id, target.chat_id) != (user_id, chat_id):
            return False
        messages = select(Message.id).where(Message.conversation_id == target.id)
        # Explicit, child first: correct even where foreign keys are not enforced.
        for stmt in (
            delete(TelegramMessage).where(TelegramMessage.message_id.in_(messages)),
            delete(Message).where(Message.conversation_id == target.id),
            delete(Conversation).where(Conversation.id == target.id),
        ):
            await self._session.execute(stmt.execution_options(**NO_SYNC))
        return True

    async def get(self, conversation_id: int) -> ConversationRecord | None:
        stmt = select(*CONVERSATION_COLUMNS).where(
            Conversation.id == check_id(conversation_id, "conversation id")
        )
        row = (await self._session.execute(stmt)).one_or_none()
        return None if row is None else conversation_record(row)

    async def list_for_user(self, user_id: int) -> list[ConversationRecord]:
        """Every conversation of the user, closed ones included, oldest first."""
        stmt = (
            select(*CONVERSATION_COLUMNS)
            .where(Conversation.user_id == check_id(user_id, "user id"))
            .order_by(Conversation.id)
        )
        return [conversation_record(row) for row in await self._session.execute(stmt)]

    async def _open_one(self, user_id: int, chat_id: int) -> ConversationRecord | None:
        stmt = select(*CONVERSATION_COLUMNS).where(
            Conversation.user_id == user_id,
            Conversation.chat_id == chat_id,
            Conversation.closed_at.is_(None),
        )
        row = (await self._session.execute(stmt)).one_or_none()
        return None if row is None else conversation_record(row)

    async def _start(self, user_id: int, chat_id: int) -> ConversationRecord:
        now = utc_now()
        # A conversation needs its user row; the bot normally upserts it first.
        await self._session.execute(
            upsert_insert(self._session, User)
            .values(id=user_id, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=[User.id])
        )
        # Two updates of one user may race here; the partial unique index lets one win and the
        # other one read the winner's row.
        stmt = (
            upsert_insert(self._session, Conversation)
            .values(user_id=user_id, chat_id=chat_id, started_at=now)
            .on_conflict_do_nothing()
            .returning(*CONVERSATION_COLUMNS)
        )
        row = (await self._session.execute(stmt)).one_or_none()
        if row is not None:
            return conversation_record(row)
        found = await self._open_one(user_id, chat_id)
        if found is None:
            raise StorageError(f"Could not open a conversation for user {user_id} in {chat_id}.")
        return found
