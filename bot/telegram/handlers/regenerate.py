"""🔄 under a finished reply: another answer to the same question, streamed as a new reply.

Only the last reply of the open conversation can be replaced; the button carries the id of the
user who asked, so in a group nobody else can press it.
"""

from __future__ import annotations

import contextlib
import logging

from aiogram import Bot, Router
from aiogram.enums import ChatType
from aiogram.exceptions import TelegramAPIError
from aiogram.types import CallbackQuery, Message
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.chat import ChatService
from bot.core.ordering import Place
from bot.core.regenerate import replace_reply
from bot.settings import Settings
from bot.telegram.delivery import DraftSupport
from bot.telegram.final_reply import RegenerateChoice, send_final
from bot.telegram.reply import TelegramReply, target_of
from bot.telegram.texts import Texts
from bot.telegram.typing_indicator import TypingIndicators
from models.errors import ModelError
from storage.records import UserRecord

logger = logging.getLogger(__name__)


async def on_regenerate(
    query: CallbackQuery,
    callback_data: RegenerateChoice,
    bot: Bot,
    session: AsyncSession,
    user: UserRecord,
    texts: Texts,
    ticket: Place,
    chat_service: ChatService,
    drafts: DraftSupport,
    typing: TypingIndicators,
    settings: Settings,
) -> None:
    message = query.message
    if callback_data.user_id != user.id or not isinstance(message, Message):
        await query.answer(texts.regenerate_not_yours, show_alert=True)
        return
    await ticket.wait()  # messages sent before the press come first
    question = await replace_reply(session, user.id, message.chat.id, callback_data.reply_id)
    ticket.release()
    if question is None:
        await query.answer(texts.regenerate_only_last, show_alert=True)
        return
    await query.answer()
    with contextlib.suppress(TelegramAPIError):  # the old reply keeps its text, not its button
        await message.edit_reply_markup(reply_markup=None)
    private = message.chat.type == ChatType.PRIVATE
    target = target_of(message, private=private)
    interval = settings.telegram.edit_interval(private)
    reply = TelegramReply(bot, target, drafts=drafts, interval=interval, texts=texts)
    async with reply, typing.until(target, reply.started):
        try:
            outcome = await chat_service.answer_waiting(
                session, question, user, message.chat.id, reply
            )
        except ModelError as exc:
            logger.error("no reply: %s", exc)
            await message.answer(texts.reply_failed)
            return
        if not outcome.shows_nothing:
            await send_final(chat_service, session, reply, outcome, texts, user.id)


def build_router() -> Router:
    router = Router(name="regenerate")
    router.callback_query.register(on_regenerate, RegenerateChoice.filter())
    return router
