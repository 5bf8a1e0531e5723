"""/new and /chats: several conversations per person. /chats lists the recent ones as buttons
(first words, date); pressing one continues it, 🗑 deletes it.

The buttons carry the id of the user who asked, so in a group nobody else can press them.
"""

from __future__ import annotations

from typing import Literal

from aiogram import Router
from aiogram.filters import Command
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core import conversations
from bot.core.chat import ChatService
from bot.core.ordering import Place
from bot.telegram.texts import Texts
from storage.records import ConversationSummary, UserRecord


class ChatsChoice(CallbackData, prefix="chats"):
    user_id: int
    action: Literal["open", "delete"]
    conversation_id: int


def keyboard(user_id: int, found: list[ConversationSummary]) -> InlineKeyboardMarkup:
    def button(text: str, action: Literal["open", "delete"], cid: int) -> InlineKeyboardButton:
        data = ChatsChoice(user_id=user_id, action=action, conversation_id=cid).pack()
        return InlineKeyboardButton(text=text, callback_data=data)

    rows = []
    for summary in found:
        mark = "• " if summary.current else ""
        title = f"{mark}{conversations.first_words(summary.first_message)}"
        label = f"{title} · {summary.last_at:%d.%m}"
        rows.append([button(label, "open", summary.id), button("🗑", "delete", summary.id)])
    return InlineKeyboardMarkup(inline_keyboard=rows)


async def on_new(
    message: Message,
    session: AsyncSession,
    user: UserRecord,
    texts: Texts,
    ticket: Place,
    chat_service: ChatService,
) -> None:
    await ticket.wait()  # the messages sent before /new belong to the old conversation
    await chat_service.reset(session, user.id, message.chat.id)
    await message.answer(texts.new_done)


async def on_chats(
    message: Message, session: AsyncSession, user: UserRecord, texts: Texts, ticket: Place
) -> None:
    await ticket.wait()
    found = await conversations.recent(session, user.id, message.chat.id)
    if not found:
        await message.answer(texts.chats_empty)
        return
    await message.answer(texts.chats_title, reply_markup=keyboard(user.id, found))


async def on_choice(
    query: CallbackQuery,
    callback_data: ChatsChoice,
    session: AsyncSession,
    user: UserRecord,
    texts: Texts,
    ticket: Place,
    chat_service: ChatService,
) -> None:
    if callback_data.user_id != user.id or not isinstance(query.message, Message):
        await query.answer(texts.chats_not_yours, show_alert=True)
        return
    chat_id, cid = query.message.chat.id, callback_data.conversation_id
    # Messages sent before the press are stored in the conversation they were written to.
    await ticket.wait()
    if callback_data.action == "open":
        found = {s.id: s for s in await conversations.recent(session, user.id, chat_id)}
        if cid not in found or not await conversations.switch(session, user.id, chat_id, cid):
            await query.answer(texts.chats_gone, show_alert=True)
            return
        await query.answer()
        title = conversations.first_words(found[cid].first_message)
        await query.message.edit_text(texts.chats_switched.format(title=title))
        return
    if chat_service.busy(user.id, chat_id):
        # Its rows may be the ones the running reply writes to.
        await query.answer(texts.chats_busy, show_alert=True)
        return
    if not await conversations.delete(chat_service, session, user.id, chat_id, cid):
        await query.answer(texts.chats_gone, show_alert=True)
        return
    await query.answer(texts.chats_deleted)
    left = await conversations.recent(session, user.id, chat_id)
    if left:
        await query.message.edit_text(texts.chats_title, reply_markup=keyboard(user.id, left))
    else:
        await query.message.edit_text(texts.chats_empty)


def build_router() -> Router:
    router = Router(name="conversations")
    router.message.register(on_new, Command("new"))
    router.message.register(on_chats, Command("chats"))
    router.callback_query.register(on_choice, ChatsChoice.filter())
    return router
