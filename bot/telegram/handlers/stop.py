"""/stop: cancel the user's running or queued reply; what was written is kept."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.chat import ChatService
from bot.telegram.texts import Texts
from storage.records import UserRecord


async def on_stop(
    message: Message,
    session: AsyncSession,
    user: UserRecord,
    texts: Texts,
    chat_service: ChatService,
) -> None:
    # With several bot processes the reply may run in another one: it reads the stop there.
    if await chat_service.stop_everywhere(session, user.id, message.chat.id):
        # The reply itself ends with a "stopped" mark; this confirms the command.
        await message.answer(texts.stop_done)
    else:
        await message.answer(texts.stop_nothing)


def build_router() -> Router:
    router = Router(name="stop")
    router.message.register(on_stop, Command("stop"))
    return router
