"""Repositories: take the caller's AsyncSession, return records, never commit.

Only portable SQL here (SQLite and PostgreSQL both speak INSERT ... ON CONFLICT and RETURNING).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import StorageError
from storage.records import (
    ConversationRecord,
    MessageRecord,
    Role,
    Status,
    StorageStats,
    UserRecord,
)
from storage.tables import Base, Conversation, Message, TelegramMessage, User
from storage.validation import (
    check_id,
    check_ids,
    check_optional_text,
    check_role,
    check_status,
    check_text,
    check_token_count,
)

# The ORM never sees these rows as objects: bulk statements skip its bookkeeping.
_NO_SYNC = {"synchronize_session": False}

_USER_COLUMNS = (
    User.id,
    User.username,
    User.first_name,
    User.language_code,
    User.system_prompt,
    User.created_at,
    User.updated_at,
)
_CONVERSATION_COLUMNS = (
    Conversation.id,
    Conversation.user_id,
    Conversation.chat_id,
    Conversation.started_at,
    Conversation.closed_at,
)
_MESSAGE_COLUMNS = (
    Message.id,
    Message.conversation_id,
    Message.role,
    Message.text,
    Message.status,
    Message.n_tokens,
    Message.model,
    Message.created_at,
)


def _now() -> datetime:
    return datetime.now(UTC)


def _upsert_insert(session: AsyncSession, entity: type[Base]) -> sqlite.Insert | postgresql.Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        return sqlite.insert(entity)
    if dialect == "postgresql":
        return postgresql.insert(entity)
    raise StorageError(f"The {dialect} database is not supported; use SQLite or PostgreSQL.")


def _user(row: Sequence[Any]) -> UserRecord:
    return UserRecord(*row)  # _USER_COLUMNS are in the record's field order


def _conversation(row: Sequence[Any]) -> ConversationRecord:
    return ConversationRecord(*row)  # likewise _CONVERSATION_COLUMNS


def messages_query() -> Select[*tuple[Any, ...]]:
    """Messages with their Telegram ids, one row per id (or one row with NULL), in order."""
    return (
        select(*_MESSAGE_COLUMNS, TelegramMessage.telegram_message_id)
        .outerjoin(TelegramMessage, TelegramMessage.message_id == Message.id)
        .order_by(Message.id, TelegramMessage.position)
    )


def history_query(conversation_id: int) -> Select[*tuple[Any, ...]]:
    """The history read: served by ix_messages_conversation_id_id, already in id order."""
    return messages_query().where(Message.conversation_id == conversation_id)


def _messages(rows: Iterable[Any]) -> list[MessageRecord]:
    """Fold the rows of messages_query() into one record per message."""
    records = []
    for _, group in itertools.groupby(rows, key=lambda row: row.id):
        carriers = list(group)
        head = carriers[0]
        records.append(
            MessageRecord(
                id=head.id,
                conversation_id=head.conversation_id,
                role=cast(Role, head.role),
                text=head.text,
                status=cast(Status, head.status),
                n_tokens=head.n_tokens,
                telegram_message_ids=tuple(
                    row.telegram_message_id
                    for row in carriers
                    if row.telegram_message_id is not None
                ),
                model=head.model,
                created_at=head.created_at,
            )
        )
    return records


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def upsert(
        self,
        user_id: int,
        *,
        username: str | None,
        first_name: str | None,
        language_code: str | None,
    ) -> UserRecord:
        """Create the user or refresh the names as last seen; the system prompt is kept."""
        user_id = check_id(user_id, "user id")
        values = {
            "username": check_optional_text(username, "username"),
            "first_name": check_optional_text(first_name, "first name"),
            "language_code": check_optional_text(language_code, "language code"),
        }
        now = _now()
        stmt = _upsert_insert(self._session, User).values(
            id=user_id, created_at=now, updated_at=now, **values
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[User.id], set_={**values, "updated_at": now}
        )
        row = (await self._session.execute(stmt.returning(*_USER_COLUMNS))).one()
        return _user(row)

    async def get(self, user_id: int) -> UserRecord | None:
        stmt = select(*_USER_COLUMNS).where(User.id == check_id(user_id, "user id"))
        row = (await self._session.execute(stmt)).one_or_none()
        return None if row is None else _user(row)

    async def set_system_prompt(self, user_id: int, prompt: str | None) -> None:
        """None returns the user to the model's default prompt."""
        user_id = check_id(user_id, "user id")
        prompt = check_optional_text(prompt, "system prompt")
        now = _now()
        stmt = _upsert_insert(self._session, User).values(
            id=user_id, system_prompt=prompt, created_at=now, updated_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[User.id], set_={"system_prompt": prompt, "updated_at": now}
        )
        await self._session.execute(stmt)

    async def forget(self, user_id: int) -> None:
        """Delete the user with every conversation and message, in every chat."""
        user_id = check_id(user_id, "user id")
        conversations = select(Conversation.id).where(Conversation.user_id == user_id)
        messages = select(Message.id).where(Message.conversation_id.in_(conversations))
        # Explicit, child first: correct even where foreign keys are not enforced.
        for stmt in (
            delete(TelegramMessage).where(TelegramMessage.message_id.in_(messages)),
            delete(Message).where(Message.conversation_id.in_(conversations)),
            delete(Conversation).where(Conversation.user_id == user_id),
            delete(User).where(User.id == user_id),
        ):
            await self._session.execute(stmt.execution_options(**_NO_SYNC))


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
            .values(closed_at=_now())
            .execution_options(**_NO_SYNC)
        )
        await self._session.execute(stmt)
        return await self._start(user_id, chat_id)

    async def get(self, conversation_id: int) -> ConversationRecord | None:
        stmt = select(*_CONVERSATION_COLUMNS).where(
            Conversation.id == check_id(conversation_id, "conversation id")
        )
        row = (await self._session.execute(stmt)).one_or_none()
        return None if row is None else _conversation(row)

    async def list_for_user(self, user_id: int) -> list[ConversationRecord]:
        """Every conversation of the user, closed ones included, oldest first."""
        stmt = (
            select(*_CONVERSATION_COLUMNS)
            .where(Conversation.user_id == check_id(user_id, "user id"))
            .order_by(Conversation.id)
        )
        return [_conversation(row) for row in await self._session.execute(stmt)]

    async def _open_one(self, user_id: int, chat_id: int) -> ConversationRecord | None:
        stmt = select(*_CONVERSATION_COLUMNS).where(
            Conversation.user_id == user_id,
            Conversation.chat_id == chat_id,
            Conversation.closed_at.is_(None),
        )
        row = (await self._session.execute(stmt)).one_or_none()
        return None if row is None else _conversation(row)

    async def _start(self, user_id: int, chat_id: int) -> ConversationRecord:
        now = _now()
        # A conversation needs its user row; the bot normally upserts it first.
        await self._session.execute(
            _upsert_insert(self._session, User)
            .values(id=user_id, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=[User.id])
        )
        # Two updates of one user may race here; the partial unique index lets one win and the
        # other one read the winner's row.
        stmt = (
            _upsert_insert(self._session, Conversation)
            .values(user_id=user_id, chat_id=chat_id, started_at=now)
            .on_conflict_do_nothing()
            .returning(*_CONVERSATION_COLUMNS)
        )
        row = (await self._session.execute(stmt)).one_or_none()
        if row is not None:
            return _conversation(row)
        found = await self._open_one(user_id, chat_id)
        if found is None:
            raise StorageError(f"Could not open a conversation for user {user_id} in {chat_id}.")
        return found


class MessageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(
        self,
        conversation_id: int,
        role: Role,
        text: str,
        *,
        status: Status = "complete",
        n_tokens: int | None = None,
        telegram_message_ids: Sequence[int] = (),
        model: str | None = None,
    ) -> MessageRecord:
        conversation_id = check_id(conversation_id, "conversation id")
        role = check_role(role)
        text = check_text(text, "message text")
        status = check_status(status)
        n_tokens = check_token_count(n_tokens)
        carriers = check_ids(telegram_message_ids, "Telegram message id")
        model = check_optional_text(model, "model name")
        exists = await self._session.scalar(
            select(Conversation.id).where(Conversation.id == conversation_id)
        )
        if exists is None:
            raise StorageError(f"Conversation {conversation_id} does not exist.")
        created_at = _now()
        stmt = (
            insert(Message)
            .values(
                conversation_id=conversation_id,
                role=role,
                text=text,
                status=status,
                n_tokens=n_tokens,
                model=model,
                created_at=created_at,
            )
            .returning(Message.id)
        )
        message_id = (await self._session.execute(stmt)).scalar_one()
        await self._insert_carriers(message_id, carriers)
        return MessageRecord(
            id=message_id,
            conversation_id=conversation_id,
            role=role,
            text=text,
            status=status,
            n_tokens=n_tokens,
            telegram_message_ids=carriers,
            model=model,
            created_at=created_at,
        )

    async def update(
        self,
        message_id: int,
        *,
        text: str | None = None,
        status: Status | None = None,
        n_tokens: int | None = None,
        telegram_message_ids: Sequence[int] | None = None,
        model: str | None = None,
    ) -> None:
        """Change the given fields (None leaves a field as it is); Telegram ids are replaced."""
        message_id = check_id(message_id, "message id")
        values: dict[str, object] = {}
        if text is not None:
            values["text"] = check_text(text, "message text")
        if status is not None:
            values["status"] = check_status(status)
        if n_tokens is not None:
            values["n_tokens"] = check_token_count(n_tokens)
        if model is not None:
            values["model"] = check_optional_text(model, "model name")
        carriers = (
            None
            if telegram_message_ids is None
            else check_ids(telegram_message_ids, "Telegram message id")
        )
        if values:
            stmt = (
                update(Message)
                .where(Message.id == message_id)
                .values(**values)
                .returning(Message.id)
                .execution_options(**_NO_SYNC)
            )
            found = (await self._session.execute(stmt)).scalar_one_or_none()
        else:
            found = await self._session.scalar(select(Message.id).where(Message.id == message_id))
        if found is None:
            raise StorageError(f"Message {message_id} does not exist.")
        if carriers is not None:
            await self._session.execute(
                delete(TelegramMessage)
                .where(TelegramMessage.message_id == message_id)
                .execution_options(**_NO_SYNC)
            )
            await self._insert_carriers(message_id, carriers)

    async def get(self, message_id: int) -> MessageRecord | None:
        stmt = messages_query().where(Message.id == check_id(message_id, "message id"))
        records = _messages(await self._session.execute(stmt))
        return records[0] if records else None

    async def history(self, conversation_id: int) -> list[MessageRecord]:
        """The conversation's messages, oldest first, in one indexed query."""
        stmt = history_query(check_id(conversation_id, "conversation id"))
        return _messages(await self._session.execute(stmt))

    async def find_by_telegram_id(
        self, conversation_id: int, telegram_message_id: int
    ) -> MessageRecord | None:
        """The stored message that a Telegram message of this conversation carried."""
        stmt = (
            select(Message.id)
            .join(TelegramMessage, TelegramMessage.message_id == Message.id)
            .where(
                Message.conversation_id == check_id(conversation_id, "conversation id"),
                TelegramMessage.telegram_message_id
                == check_id(telegram_message_id, "Telegram message id"),
            )
            .order_by(Message.id.desc())
            .limit(1)
        )
        message_id = await self._session.scalar(stmt)
        return None if message_id is None else await self.get(message_id)

    async def mark_pending_as_partial(self) -> int:
        """At start-up: replies left `pending` by a crashed or killed process become `partial`
        (kept, never dropped). Returns how many there were. Only for a single bot process."""
        stmt = (
            update(Message)
            .where(Message.status == "pending")
            .values(status="partial")
            .returning(Message.id)
            .execution_options(**_NO_SYNC)
        )
        return len((await self._session.execute(stmt)).all())

    async def _insert_carriers(self, message_id: int, carriers: tuple[int, ...]) -> None:
        if carriers:
            await self._session.execute(
                insert(TelegramMessage),
                [
                    {"message_id": message_id, "position": position, "telegram_message_id": tid}
                    for position, tid in enumerate(carriers)
                ],
            )


class StatsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def totals(self) -> StorageStats:
        def count(entity: type[Base]) -> Any:
            return select(func.count()).select_from(entity).scalar_subquery()

        totals = select(count(User), count(Conversation), count(Message))
        row = (await self._session.execute(totals)).one()
        return StorageStats(users=row[0], conversations=row[1], messages=row[2])
