"""/start and /help."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message

from bot.telegram.texts import Texts


async def on_start(message: Message, texts: Texts) -> None:
    await message.answer(texts.start)


async def on_help(message: Message, texts: Texts) -> None:
    await message.answer(texts.help)


def build_router() -> Router:
    router = Router(name="start")
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    return router
