"""Keep the user's record current (name, language) and hand it to the handlers."""

from __future__ import annotations

from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, User

from bot.core.chat import ChatService
from bot.telegram.middlewares import Handler


class UserMiddleware(BaseMiddleware):
    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User | None = data.get("event_from_user")
        if user is None:  # the Stop button's update names no user
            return await handler(event, data)
        service: ChatService = data["chat_service"]
        data["user"] = await service.touch_user(
            data["session"],
            user.id,
            username=user.username,
            first_name=user.first_name,
            language_code=user.language_code,
        )
        return await handler(event, data)
