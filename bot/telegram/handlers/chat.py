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

from bot.core.chat import ChatService, ServiceClosing
from bot.settings import Settings
from bot.telegram.filters import Addressed, text_for_bot
from bot.telegram.reply import DraftSupport, TelegramReply, message_thread
from bot.telegram.texts import Texts
from models.errors import ModelError
from storage.errors import StorageError
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
    chat_service: ChatService,
    drafts: DraftSupport,
    settings: Settings,
) -> None:
    text = await text_for_bot(message, bot)
    if not text:
        await message.answer(texts.help)
        return
    private = message.chat.type == ChatType.PRIVATE
    sink = TelegramReply(
        bot,
        message.chat.id,
        private=private,
        drafts=drafts,
        interval=settings.stream_edit_interval,
        reply_to=None if private else message.message_id,
        thread_id=message_thread(message),
    )
    try:
        await chat_service.reply(
            session,
            user=user,
            chat_id=message.chat.id,
            text=text,
            telegram_id=message.message_id,
            sink=sink,
            texts=texts,
        )
    except ServiceClosing:
        await message.answer(texts.shutting_down)
    except StorageError as exc:
        # The storage's reasons are for the operator; the user gets a sentence in their language.
        logger.warning("message not stored: %s", exc)
        await message.answer(texts.reply_failed)
    except ModelError as exc:
        logger.error("no reply: %s", exc)
        await message.answer(texts.reply_failed)
    except TelegramAPIError as exc:
        # The reply is stored already; Telegram would not take it even after retries.
        logger.error("reply not delivered to chat %d: %s", message.chat.id, exc)
    finally:
        await sink.close()


async def on_edited(
    message: Message,
    bot: Bot,
    session: AsyncSession,
    user: UserRecord,
    texts: Texts,
    chat_service: ChatService,
) -> None:
    text = await text_for_bot(message, bot)
    if not text:
        return
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
