"""Free text: a turn of the user's conversation, answered with a streamed reply.

In groups the bot answers only when mentioned or replied to, keeping a history per user in
that chat. Edited messages correct their stored turn instead of adding a new one.
"""

from __future__ import annotations

import logging

from aiogram import Bot, F, Router
from aiogram.enums import ChatType
from aiogram.exceptions import TelegramAPIError
from aiogram.types import Message
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.chat import ChatService
from bot.core.ordering import Place
from bot.core.turn import Turn
from bot.settings import Settings
from bot.telegram.delivery import DraftSupport
from bot.telegram.filters import Addressed, text_for_bot
from bot.telegram.final_reply import send_final
from bot.telegram.reply import TelegramReply, target_of
from bot.telegram.texts import Texts
from bot.telegram.typing_indicator import TypingIndicators
from models.errors import ModelError
from storage.records import UserRecord

logger = logging.getLogger(__name__)


async def on_unknown_command(message: Message, texts: Texts) -> None:
    # The command routers come first, so only commands nobody knows arrive here.
    await message.answer(texts.help)


async def on_text(
    message: Message,
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
    text = await text_for_bot(message, bot)
    if not text:
        await message.answer(texts.help)
        return
    target = target_of(message, private=message.chat.type == ChatType.PRIVATE)
    turn = Turn(user, message.chat.id, text, message.message_id)
    reply = TelegramReply(
        bot,
        target,
        drafts=drafts,
        interval=settings.telegram.edit_interval(target.private),
        texts=texts,
    )
    async with reply, typing.until(target, reply.started):
        await _answer(message, session, turn, reply, ticket, chat_service, texts)


async def _answer(
    message: Message,
    session: AsyncSession,
    turn: Turn,
    reply: TelegramReply,
    ticket: Place,
    chat_service: ChatService,
    texts: Texts,
) -> None:
    try:
        outcome = await chat_service.reply(session, turn, reply, ticket)
    except ModelError as exc:
        logger.error("no reply: %s", exc)
        await message.answer(texts.reply_failed)
        return
    if outcome.waiting:
        # With several processes, another one takes the message over within a second.
        shared = chat_service.coordination.shared
        try:
            await message.answer(texts.answer_elsewhere if shared else texts.answer_after_restart)
        except TelegramAPIError as exc:
            logger.error("chat %d not told its message waits: %s", message.chat.id, exc)
    if not outcome.shows_nothing:
        await send_final(chat_service, session, reply, outcome, texts, turn.user.id)


async def on_edited(
    message: Message,
    bot: Bot,
    session: AsyncSession,
    user: UserRecord,
    texts: Texts,
    ticket: Place,
    chat_service: ChatService,
) -> None:
    text = await text_for_bot(message, bot)
    if not text:
        return
    await ticket.wait()
    if await chat_service.apply_edit(session, user.id, message.chat.id, message.message_id, text):
        await message.answer(texts.edit_noted)


def build_router() -> Router:
    router = Router(name="chat")
    router.message.register(
        on_unknown_command, F.text.regexp(r"^/\w+"), F.chat.type == ChatType.PRIVATE
    )
    router.message.register(on_text, F.text, Addressed())
    router.edited_message.register(on_edited, F.text, Addressed())
    return router
