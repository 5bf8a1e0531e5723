"""/system shows the system prompt, `/system <text>` sets the user's own, `/system reset`
restores the default."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.chat import ChatService
from bot.core.ordering import Place
from bot.core.system_prompt import system_command
from bot.telegram.texts import Texts
from storage.records import UserRecord


async def on_system(
    message: Message,
    command: CommandObject,
    session: AsyncSession,
    user: UserRecord,
    texts: Texts,
    ticket: Place,
    chat_service: ChatService,
) -> None:
    await ticket.wait()  # applies to the messages after it, not to those before
    answer = await system_command(chat_service, session, user.id, command.args or "")
    await message.answer(texts.system_answer(answer))


def build_router() -> Router:
    router = Router(name="system")
    router.message.register(on_system, Command("system"))
    return router
