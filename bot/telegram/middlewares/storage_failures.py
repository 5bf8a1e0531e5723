"""A database that fails (full disk, read-only file system, a lock held too long) costs the
user one sentence and the operator one log line; the next update tries again."""

from __future__ import annotations

import logging
from typing import Any

from aiogram import BaseMiddleware
from aiogram.exceptions import TelegramAPIError
from aiogram.types import CallbackQuery, TelegramObject, Update, User
from sqlalchemy.exc import SQLAlchemyError

from bot.telegram.middlewares import Handler
from bot.telegram.texts import Texts, texts_for
from storage.errors import StorageError

logger = logging.getLogger(__name__)


class StorageFailureMiddleware(BaseMiddleware):
    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        try:
            return await handler(event, data)
        except (SQLAlchemyError, StorageError) as exc:
            # The exception's text names the failure; statement parameters stay hidden.
            first_line = next(iter(str(exc).splitlines()), type(exc).__name__)
            logger.error("storage failed: %s", first_line)
            user: User | None = data.get("event_from_user")
            texts: Texts = data.get("texts") or texts_for(user.language_code if user else None)
            assert isinstance(event, Update)
            try:
                if event.message is not None:
                    await event.message.answer(texts.storage_failed)
                elif isinstance(event.callback_query, CallbackQuery):
                    await event.callback_query.answer(texts.storage_failed, show_alert=True)
            except TelegramAPIError as telegram_exc:
                logger.warning("could not tell the user about it: %s", telegram_exc)
            return None
