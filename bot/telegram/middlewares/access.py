"""Refuse strangers before anything else runs: they learn their numeric id, privately, and
nothing more. Listed @usernames are bound to the first account seen with them (see access.py)."""

from __future__ import annotations

import logging
from typing import Any

from aiogram import BaseMiddleware, Bot
from aiogram.enums import ChatType
from aiogram.exceptions import TelegramAPIError
from aiogram.types import CallbackQuery, TelegramObject, Update, User
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.core.username_access import bound_names
from bot.telegram.access import AccessPolicy
from bot.telegram.filters import is_addressed
from bot.telegram.middlewares import Handler
from bot.telegram.texts import Texts, texts_for

logger = logging.getLogger(__name__)


class AccessMiddleware(BaseMiddleware):
    def __init__(
        self,
        policy: AccessPolicy,
        session_factory: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        if policy.usernames and session_factory is None:
            raise ValueError("@usernames in the access lists need the database to bind them")
        self._policy = policy
        self._session_factory = session_factory

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User | None = data.get("event_from_user")
        if user is None and isinstance(event, Update) and event.stopped_message_generation:
            # No user in it: the Stop button of a draft only a served user was shown.
            return await handler(event, data)
        if user is None or user.is_bot:
            return None  # channel posts and other bots: nothing to serve
        texts = texts_for(user.language_code)
        data["texts"] = texts
        names = await self._bound_names(user)
        data["is_admin"] = self._policy.is_admin(user.id, names)
        if self._policy.is_allowed(user.id, names):
            return await handler(event, data)
        logger.info("refused user %d", user.id)
        assert isinstance(event, Update)
        try:
            await _refuse(event, data["bot"], user, texts)
        except TelegramAPIError as exc:
            logger.warning("could not tell a stranger that access is closed: %s", exc)
        return None

    async def _bound_names(self, user: User) -> frozenset[str]:
        """The listed @usernames that belong to this account. Ids alone need no database."""
        listed = self._policy.usernames
        if not listed or self._session_factory is None or user.id in self._policy.admins.ids:
            return frozenset()
        return await bound_names(self._session_factory, user.id, user.username, listed)


async def _refuse(event: Update, bot: Bot, user: User, texts: Texts) -> None:
    with_id = texts.access_closed.format(user_id=user.id)
    if event.callback_query is not None:
        await _answer_callback(event.callback_query, with_id)  # an alert only they see
        return
    message = event.message
    if message is None:
        return
    if message.chat.type == ChatType.PRIVATE:
        await message.answer(with_id)
        return
    # In a group a stranger is answered only when talking to the bot, and their id is not
    # posted for everyone to read: it goes to them privately, where Telegram allows that.
    if not await is_addressed(message, bot):
        return
    try:
        await bot.send_message(user.id, with_id)
    except TelegramAPIError as exc:  # they never opened a chat with the bot
        logger.info("no private message to %d (%s); answering in the group", user.id, exc)
        await message.reply(texts.access_closed_here)
        return
    await message.reply(texts.access_closed_sent)


async def _answer_callback(query: CallbackQuery, text: str) -> None:
    await query.answer(text, show_alert=True)
