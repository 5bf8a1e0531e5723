"""Columns and row folding shared by the repositories."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Select, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import StorageError
from storage.records import ConversationRecord, MessageRecord, Role, Status, UserRecord
from storage.tables import Base, Conversation, Message, TelegramMessage, User

# The ORM never sees these rows as objects: bulk statements skip its bookkeeping.
NO_SYNC = {"synchronize_session": False}

USER_COLUMNS = (
    User.id,
    User.username,
    User.first_name,
    User.language_code,
    User.system_prompt,
    User.created_at,
    User.updated_at,
)
CONVERSATION_COLUMNS = (
    Conversation.id,
    Conversation.user_id,
    Conversation.chat_id,
    Conversation.started_at,
    Conversation.closed_at,
)
MESSAGE_COLUMNS = (
    Message.id,
    Message.conversation_id,
    Message.role,
    Message.text,
    Message.status,
    Message.n_tokens,
    Message.model,
    Message.created_at,
    Message.reply_to,
    Message.delivered,
)


def utc_now() -> datetime:
    return datetime.now(UTC)


def upsert_insert(session: AsyncSession, entity: type[Base]) -> sqlite.Insert | postgresql.Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        return sqlite.insert(entity)
    if dialect == "postgresql":
        return postgresql.insert(entity)
    raise StorageError(f"The {dialect} database is not supported; use SQLite or PostgreSQL.")


def user_record(row: Sequence[Any]) -> UserRecord:
    return UserRecord(*row)  # USER_COLUMNS are in the record's field order


def conversation_record(row: Sequence[Any]) -> ConversationRecord:
    return ConversationRecord(*row)  # likewise CONVERSATION_COLUMNS


def messages_query() -> Select[*tuple[Any, ...]]:
    """Messages with their Telegram ids, one row per id (or one row with NULL), in order."""
    return (
        select(*MESSAGE_COLUMNS, TelegramMessage.telegram_message_id)
        .outerjoin(TelegramMessage, TelegramMessage.message_id == Message.id)
        .order_by(Message.id, TelegramMessage.position)
    )


def history_query(conversation_id: int) -> Select[*tuple[Any, ...]]:
    """The history read: served by ix_messages_conversation_id_id, already in id order."""
    return messages_query().where(Message.conversation_id == conversation_id)


def message_records(rows: Iterable[Any]) -> list[MessageRecord]:
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
                reply_to=head.reply_to,
                delivered=head.delivered,
            )
        )
    return records
