"""Keep the user's record current (name, language) and hand it to the handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, User
from sqlalchemy.ext.asyncio import AsyncSession

from storage.repositories import UserRepository

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class UserMiddleware(BaseMiddleware):
    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User = data["event_from_user"]
        session: AsyncSession = data["session"]
        data["user"] = await UserRepository(session).upsert(
            user.id,
            username=user.username,
            first_name=user.first_name,
            language_code=user.language_code,
        )
        # Committed at once so a long reply never holds the write lock on the users table.
        await session.commit()
        return await handler(event, data)
