"""An update Telegram delivers twice (to two bot processes, or again after a restart) is
handled once: its id is recorded in the database, and a known one is dropped.

Registered right after the ordering middleware (which must take its place in line before any
`await`) and the storage-failure one (a failing database costs one sentence here too)."""

from __future__ import annotations

import logging
from typing import Any

from aiogram import BaseMiddleware
from aiogram.dispatcher.event.bases import UNHANDLED
from aiogram.types import TelegramObject, Update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.core.chat import ChatService
from bot.telegram.middlewares import Handler

logger = logging.getLogger(__name__)


class UpdateOnceMiddleware(BaseMiddleware):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], service: ChatService) -> None:
        self._sessions = sessions
        self._service = service

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        if isinstance(event, Update):
            async with self._sessions() as session:
                first = await self._service.first_delivery(session, event.update_id)
            if not first:
                logger.info("update %d was delivered again: handled once already", event.update_id)
                return UNHANDLED
        return await handler(event, data)
