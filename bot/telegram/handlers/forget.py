"""/forget: delete everything stored about the user, after a confirmation button.

The buttons carry the id of the user who asked, so in a group nobody else can press them.
"""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.chat import ChatService
from bot.core.ordering import Place
from bot.telegram.texts import Texts
from storage.records import UserRecord


class ForgetChoice(CallbackData, prefix="forget"):
    user_id: int
    confirm: bool


async def on_forget(message: Message, user: UserRecord, texts: Texts) -> None:
    def button(text: str, confirm: bool) -> InlineKeyboardButton:
        data = ForgetChoice(user_id=user.id, confirm=confirm).pack()
        return InlineKeyboardButton(text=text, callback_data=data)

    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[button(texts.forget_yes, True), button(texts.forget_no, False)]]
    )
    await message.answer(texts.forget_confirm, reply_markup=keyboard)


async def on_choice(
    query: CallbackQuery,
    callback_data: ForgetChoice,
    session: AsyncSession,
    user: UserRecord,
    texts: Texts,
    ticket: Place,
    chat_service: ChatService,
) -> None:
    if callback_data.user_id != user.id:
        await query.answer(texts.forget_not_yours, show_alert=True)
        return
    if callback_data.confirm:
        # Messages that came before the button press, in any chat, are stored first, then
        # deleted with the rest; nothing of them is written afterwards.
        await ticket.wait_for_user()
        await chat_service.forget(session, user.id)
    await query.answer()
    if isinstance(query.message, Message):
        await query.message.edit_text(
            texts.forget_done if callback_data.confirm else texts.forget_cancelled
        )


def build_router() -> Router:
    router = Router(name="forget")
    router.message.register(on_forget, Command("forget"))
    router.callback_query.register(on_choice, ForgetChoice.filter())
    return router
