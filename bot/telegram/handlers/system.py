"""/system shows the system prompt, `/system <text>` sets the user's own, `/system reset`
restores the default."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.chat import ChatService
from bot.telegram.texts import Texts
from storage.records import UserRecord

RESET_WORDS = {"reset", "default", "сброс", "сбросить"}


async def on_system(
    message: Message,
    command: CommandObject,
    session: AsyncSession,
    user: UserRecord,
    texts: Texts,
    chat_service: ChatService,
) -> None:
    argument = (command.args or "").strip()
    if not argument:
        if user.system_prompt:
            await message.answer(texts.system_current.format(prompt=user.system_prompt))
        else:
            default = chat_service.default_system_prompt or "—"
            await message.answer(texts.system_default.format(prompt=default))
        return
    if argument.lower() in RESET_WORDS:
        await chat_service.set_system_prompt(session, user.id, None)
        await message.answer(texts.system_reset_done)
        return
    too_long = chat_service.check_system_prompt(argument)
    if too_long is not None:
        tokens, budget = too_long
        await message.answer(texts.system_too_long.format(tokens=tokens, budget=budget))
        return
    await chat_service.set_system_prompt(session, user.id, argument)
    await message.answer(texts.system_set)


def build_router() -> Router:
    router = Router(name="system")
    router.message.register(on_system, Command("system"))
    return router
