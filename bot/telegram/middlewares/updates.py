"""An update Telegram delivers twice (to two bot processes, or again after a restart) is
handled once: its id is recorded in the database once the update is accepted, and a known one
is dropped.

Registered right after the ordering middleware (which must take its place in line before any
`await`) and the storage-failure one (a failing database costs one sentence here too)."""

from __future__ import annotations

import logging
from typing import Any

from aiogram import BaseMiddleware
from aiogram.dispatcher.event.bases import UNHANDLED
from aiogram.types import TelegramObject, Update

from bot.core.chat import ChatService
from bot.core.ordering import Place
from bot.telegram.middlewares import Handler

logger = logging.getLogger(__name__)


class UpdateOnceMiddleware(BaseMiddleware):
    def __init__(self, service: ChatService) -> None:
        self._service = service

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        if not isinstance(event, Update):
            return await handler(event, data)
        async with self._service.update_once(event.update_id) as turn:
            if not turn.first:
                logger.info("update %d was delivered again: handled once already", event.update_id)
                return UNHANDLED
            # Recorded once its message is stored (the ticket's release), not before: a
            # process that dies in between leaves the update to Telegram's next delivery.
            ticket: Place | None = data.get("ticket")
            if ticket is not None:
                ticket.conversation.on_release(turn.accepted)
            return await handler(event, data)
