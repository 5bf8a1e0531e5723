"""Telegram's own Stop button under a rich draft: the same as /stop for that reply.

The `stopped_message_generation` update names only the chat and the draft, no user: a rich
draft is only ever shown in a private chat, whose id is its user's id.
"""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.enums import ChatType
from aiogram.types import MessageGenerationStopped
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.chat import ChatService
from bot.telegram.delivery import DraftSupport

logger = logging.getLogger(__name__)


async def on_stop_button(
    event: MessageGenerationStopped,
    session: AsyncSession,
    chat_service: ChatService,
    drafts: DraftSupport,
) -> None:
    chat_id = event.chat.id
    if event.chat.type == ChatType.PRIVATE and drafts.stop(chat_id, event.draft_id):
        if not chat_service.stop(chat_id, chat_id):
            logger.info("Stop pressed in chat %d with no reply running", chat_id)
        return
    # Not a draft of this process: another one may be writing it, and reads the stop there.
    shared = event.chat.type == ChatType.PRIVATE and chat_service.coordination.shared
    if shared and await chat_service.stop_everywhere(session, chat_id, chat_id):
        return
    # A draft that is over already: its reply was delivered, nothing runs any more.
    logger.info("Stop pressed on a finished draft in chat %d", chat_id)


def build_router() -> Router:
    router = Router(name="stop_button")
    router.stopped_message_generation.register(on_stop_button)
    return router
