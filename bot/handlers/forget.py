"""/forget: delete everything stored about the user, after a confirmation button."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message
from sqlalchemy.ext.asyncio import AsyncSession

from bot.services.chat import ChatService
from bot.texts import Texts
from storage.records import UserRecord

CONFIRM = "forget:yes"
CANCEL = "forget:no"


async def on_forget(message: Message, texts: Texts) -> None:
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(text=texts.forget_yes, callback_data=CONFIRM),
                InlineKeyboardButton(text=texts.forget_no, callback_data=CANCEL),
            ]
        ]
    )
    await message.answer(texts.forget_confirm, reply_markup=keyboard)


async def on_confirm(
    query: CallbackQuery,
    session: AsyncSession,
    user: UserRecord,
    texts: Texts,
    chat_service: ChatService,
) -> None:
    await chat_service.forget(session, user.id)
    await query.answer()
    if isinstance(query.message, Message):
        await query.message.edit_text(texts.forget_done)


async def on_cancel(query: CallbackQuery, texts: Texts) -> None:
    await query.answer()
    if isinstance(query.message, Message):
        await query.message.edit_text(texts.forget_cancelled)


def build_router() -> Router:
    router = Router(name="forget")
    router.message.register(on_forget, Command("forget"))
    router.callback_query.register(on_confirm, F.data == CONFIRM)
    router.callback_query.register(on_cancel, F.data == CANCEL)
    return router
