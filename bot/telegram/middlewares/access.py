"""Refuse strangers before anything else runs: they get their numeric id and nothing more."""

from __future__ import annotations

import logging
from typing import Any

from aiogram import BaseMiddleware, Bot
from aiogram.enums import ChatType
from aiogram.exceptions import TelegramAPIError
from aiogram.types import CallbackQuery, Message, TelegramObject, Update, User

from bot.telegram.access import AccessPolicy
from bot.telegram.filters import is_addressed
from bot.telegram.middlewares import Handler
from bot.telegram.texts import texts_for

logger = logging.getLogger(__name__)


class AccessMiddleware(BaseMiddleware):
    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User | None = data.get("event_from_user")
        if user is None or user.is_bot:
            return None  # channel posts and other bots: nothing to serve
        texts = texts_for(user.language_code)
        data["texts"] = texts
        data["is_admin"] = self._policy.is_admin(user.id, user.username)
        if self._policy.is_allowed(user.id, user.username):
            return await handler(event, data)
        logger.info("refused user %d", user.id)
        bot: Bot = data["bot"]
        text = texts.access_closed.format(user_id=user.id)
        assert isinstance(event, Update)
        try:
            if event.message is not None and await self._should_answer(event.message, bot):
                await event.message.answer(text)
            elif event.callback_query is not None:
                await _answer_callback(event.callback_query, text)
        except TelegramAPIError as exc:
            logger.warning("could not tell a stranger that access is closed: %s", exc)
        return None

    @staticmethod
    async def _should_answer(message: Message, bot: Bot) -> bool:
        # In a group a stranger is answered only when talking to the bot.
        if message.chat.type == ChatType.PRIVATE:
            return True
        return await is_addressed(message, bot)


async def _answer_callback(query: CallbackQuery, text: str) -> None:
    await query.answer(text, show_alert=True)
