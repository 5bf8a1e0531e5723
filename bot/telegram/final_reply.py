"""The end of every reply shown in Telegram: the final message(s) with the notes that say how
it ended and the 🔄 button, then the delivery recorded (`ChatService.delivered`), which lets go
of the reply's claim. A reply stored but never sent (its process was killed in between) is
sent the same way by whoever finds it: see `outcome_of`."""

from __future__ import annotations

import logging

from aiogram.exceptions import TelegramAPIError
from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.chat import ChatService
from bot.core.turn import Outcome
from bot.telegram.reply import TelegramReply
from bot.telegram.texts import Texts
from storage.records import MessageRecord

logger = logging.getLogger(__name__)


class RegenerateChoice(CallbackData, prefix="regen"):
    user_id: int
    reply_id: int  # the stored reply


def regenerate_button(texts: Texts, user_id: int, reply_id: int | None) -> InlineKeyboardMarkup:
    data = RegenerateChoice(user_id=user_id, reply_id=reply_id or 0).pack()
    button = InlineKeyboardButton(text=texts.regenerate_button, callback_data=data)
    return InlineKeyboardMarkup(inline_keyboard=[[button]])


async def send_final(
    chat: ChatService,
    session: AsyncSession,
    reply: TelegramReply,
    outcome: Outcome,
    texts: Texts,
    user_id: int,
) -> None:
    """Send the finished reply of `outcome` (one that shows something) and record it sent."""
    markup = regenerate_button(texts, user_id, outcome.bot_message_id)
    try:
        ids = await reply.finish(outcome.text, texts.notes_for(outcome), markup)
    except TelegramAPIError as exc:
        # Telegram would not take it even after retries: what reached the chat is all it gets.
        logger.error("reply %s not delivered: %s", outcome.bot_message_id, exc)
        ids = reply.message_ids
    except BaseException:
        await chat.not_delivered(outcome.bot_message_id)  # cut short: left for whoever finds it
        raise
    await chat.delivered(session, outcome.bot_message_id, ids)


def outcome_of(stored: MessageRecord) -> Outcome:
    """A reply stored final and never sent, as its front end would have ended it: the notes
    that its status tells (a cut reply was interrupted, a failed one failed)."""
    return Outcome(
        stored.text,
        stored.status,
        stored.id,
        interrupted=stored.status == "partial",
        failed=stored.status == "failed",
    )
