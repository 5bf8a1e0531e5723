"""/reset: start a new conversation; the old one stays in the database, closed."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.chat import ChatService
from bot.core.ordering import Place
from bot.telegram.texts import Texts
from storage.records import UserRecord


async def on_reset(
    message: Message,
    session: AsyncSession,
    user: UserRecord,
    texts: Texts,
    ticket: Place,
    chat_service: ChatService,
) -> None:
    await ticket.wait()  # the messages sent before /reset belong to the old conversation
    await chat_service.reset(session, user.id, message.chat.id)
    await message.answer(texts.reset_done)


def build_router() -> Router:
    router = Router(name="reset")
    router.message.register(on_reset, Command("reset"))
    return router
