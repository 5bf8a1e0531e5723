"""/stop: cancel the user's running or queued reply; what was written is kept."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from bot.core.chat import ChatService
from bot.telegram.texts import Texts
from storage.records import UserRecord


async def on_stop(
    message: Message, user: UserRecord, texts: Texts, chat_service: ChatService
) -> None:
    if chat_service.stop(user.id, message.chat.id):
        # The reply itself ends with a "stopped" mark; this confirms the command.
        await message.answer(texts.stop_done)
    else:
        await message.answer(texts.stop_nothing)


def build_router() -> Router:
    router = Router(name="stop")
    router.message.register(on_stop, Command("stop"))
    return router
