"""Repositories: take the caller's AsyncSession, return records, never commit.

Only portable SQL here (SQLite and PostgreSQL both speak INSERT ... ON CONFLICT and RETURNING).
"""

from storage.repositories._rows import history_query, messages_query
from storage.repositories.conversations import ConversationRepository
from storage.repositories.messages import MessageRepository
from storage.repositories.stats import StatsRepository
from storage.repositories.users import UserRepository

__all__ = [
    "ConversationRepository",
    "MessageRepository",
    "StatsRepository",
    "UserRepository",
    "history_query",
    "messages_query",
]
