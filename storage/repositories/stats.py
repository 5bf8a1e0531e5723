"""Totals for /status."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.records import (
    StorageStats,
)
from storage.tables import Base, Conversation, Message, User


class StatsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def totals(self) -> StorageStats:
        def count(entity: type[Base]) -> Any:
            return select(func.count()).select_from(entity).scalar_subquery()

        totals = select(count(User), count(Conversation), count(Message))
        row = (await self._session.execute(totals)).one()
        return StorageStats(users=row[0], conversations=row[1], messages=row[2])
