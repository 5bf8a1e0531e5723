"""ORM tables. Only storage/ uses them; everything outside sees records.py.

Migrations in storage/migrations/versions/ must produce exactly this schema; a test compares them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    true,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storage.column_types import ExactText, UTCDateTime

# Named constraints, so that later migrations (SQLite batch mode) can address them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# 64-bit ids on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the auto-numbered rowid.
SurrogateId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    username: Mapped[str | None] = mapped_column(ExactText)
    first_name: Mapped[str | None] = mapped_column(ExactText)
    language_code: Mapped[str | None] = mapped_column(ExactText)
    system_prompt: Mapped[str | None] = mapped_column(ExactText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(SurrogateId, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    chat_id: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_conversations_user_id_chat_id", "user_id", "chat_id"),
        # At most one open conversation per user and chat, even when two updates race.
        Index(
            "uq_conversations_open",
            "user_id",
            "chat_id",
            unique=True,
            sqlite_where=sql_text("closed_at IS NULL"),
            postgresql_where=sql_text("closed_at IS NULL"),
        ),
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(SurrogateId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(ExactText)
    status: Mapped[str] = mapped_column(String(16))
    n_tokens: Mapped[int | None] = mapped_column(Integer)
    model: Mapped[str | None] = mapped_column(ExactText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The user message a bot reply answers. CASCADE: a reply means nothing without its
    # question, and a reply left behind would be shown to the model after another message.
    reply_to: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("messages.id", ondelete="CASCADE")
    )
    # False from the opening of a bot reply until the front end has sent it to its chat: a
    # final reply still false was left by a process that died in between (see bot.telegram.sweep).
    delivered: Mapped[bool] = mapped_column(Boolean, server_default=true())

    __table_args__ = (
        # The history read: one conversation's rows in id order, straight from this index.
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        # Deleting messages looks up the replies to each one: without it, a scan per row.
        Index("ix_messages_reply_to", "reply_to"),
        CheckConstraint("role IN ('user', 'bot')", name="role"),
        CheckConstraint(
            "status IN ('complete', 'partial', 'failed', 'pending', 'replaced')", name="status"
        ),
        CheckConstraint("n_tokens >= 0", name="n_tokens"),
    )


class TelegramMessage(Base):
    """The Telegram messages that carried one stored message (a long reply takes several)."""

    __tablename__ = "telegram_messages"

    message_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    telegram_message_id: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_telegram_messages_telegram_message_id", "telegram_message_id"),)


class UsernameBinding(Base):
    """An @username from ALLOWED_USERS or ADMIN_USERS, bound to the first account seen with it:
    the name grants access to that account only, even after a rename. No foreign key: /forget
    deletes a user's conversations, not the operator's access list."""

    __tablename__ = "username_bindings"

    username: Mapped[str] = mapped_column(ExactText, primary_key=True)  # lower case, no "@"
    user_id: Mapped[int] = mapped_column(BigInteger)
    bound_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_username_bindings_user_id", "user_id"),)


class ProcessedUpdate(Base):
    """A Telegram update some bot process took on: delivered again (to another process, or
    after a restart) it is dropped. Pruned after a day, longer than Telegram retries."""

    __tablename__ = "processed_updates"

    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_processed_updates_seen_at", "seen_at"),)


class ReceivedMessage(Base):
    """The Telegram message a user message was stored from: the key makes a second store of
    the same message fail in the database, whichever process tries it."""

    __tablename__ = "received_messages"

    chat_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    telegram_message_id: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, autoincrement=False
    )
    message_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("messages.id", ondelete="CASCADE")
    )

    __table_args__ = (Index("ix_received_messages_message_id", "message_id"),)


class StopRequest(Base):
    """/stop or the Stop button, for the process that runs the reply: replies to messages up
    to `up_to_message_id` of the user in that chat end."""

    __tablename__ = "stop_requests"

    id: Mapped[int] = mapped_column(SurrogateId, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    up_to_message_id: Mapped[int] = mapped_column(BigInteger)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EngineSlot(Base):
    """Which conversation a remote server's slot last served (its cells hold that prompt)."""

    __tablename__ = "engine_slots"

    server: Mapped[str] = mapped_column(ExactText, primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str | None] = mapped_column(ExactText)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_engine_slots_owner", "owner"),)
