"""Plain, frozen records the repositories hand out instead of ORM objects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

Role = Literal["user", "bot"]
# "pending": a bot reply row created before generation and updated while it streams.
# 'replaced': a reply the user regenerated; kept, never shown to the model again.
Status = Literal["complete", "partial", "failed", "pending", "replaced"]
# How a reply can end: a final reply not delivered yet is sent by whoever finds it.
FINAL_STATUSES: tuple[Status, ...] = ("complete", "partial", "failed")

ROLES: tuple[str, ...] = get_args(Role)
STATUSES: tuple[str, ...] = get_args(Status)


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int  # Telegram user id
    username: str | None
    first_name: str | None
    language_code: str | None
    system_prompt: str | None  # None: the model's default
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    id: int
    user_id: int
    chat_id: int  # private chat: equals user_id
    started_at: datetime
    closed_at: datetime | None


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """One line of a user's conversation list: how it began and when it was last used."""

    id: int
    first_message: str  # the user's first message in it
    last_at: datetime
    current: bool  # the conversation new messages go to


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: int
    conversation_id: int
    role: Role
    text: str
    status: Status
    n_tokens: int | None
    telegram_message_ids: tuple[int, ...]
    model: str | None
    created_at: datetime
    # A bot reply: the user message it answers (None for a user message, and for replies
    # stored before migration 0005). The transcript puts each reply right after its question.
    reply_to: int | None = None
    # A bot reply sent to its chat (every row stored before migration 0006 counts as sent).
    delivered: bool = True


@dataclass(frozen=True, slots=True)
class StorageStats:
    users: int
    conversations: int
    messages: int
