"""After a restart: answer the messages the last run accepted but had no time to answer."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiogram.exceptions import TelegramAPIError
from sqlalchemy.exc import SQLAlchemyError

from bot.core.turn_writer import record_delivery
from bot.telegram.delivery import ChatTarget
from bot.telegram.handlers.regenerate import regenerate_button
from bot.telegram.reply import TelegramReply
from bot.telegram.texts import texts_for
from models.errors import ModelError
from storage.errors import StorageError
from storage.records import MessageRecord, UserRecord

if TYPE_CHECKING:
    from bot.telegram.app import BotApp

logger = logging.getLogger(__name__)


async def start_answering_waiting(app: BotApp) -> asyncio.Task[None] | None:
    """Before polling starts: one task per message left from the last run, each in its
    conversation's line already, so a new message is answered after them."""
    async with app.services.sessions() as session:
        waiting = await app.services.chat.waiting_messages(session)
    if not waiting:
        return None
    logger.info("Answering %d messages left from the last run", len(waiting))
    tasks = [asyncio.create_task(answer_logged(app, *item)) for item in waiting]
    await asyncio.sleep(0)  # let each take its place in line before any update arrives
    return asyncio.create_task(_gather(tasks))


async def answer_waiting_messages(app: BotApp) -> None:
    task = await start_answering_waiting(app)
    if task is not None:
        await task


async def _gather(tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*tasks)


async def answer_logged(app: BotApp, message: MessageRecord, user: UserRecord, chat: int) -> None:
    """Answer a message accepted earlier (by this process, or by one that is gone)."""
    try:
        await _answer_one(app, message, user, chat)
    except (TelegramAPIError, SQLAlchemyError, StorageError, ModelError) as exc:
        logger.error("a message left from the last run was not answered: %s", exc)


async def _answer_one(app: BotApp, message: MessageRecord, user: UserRecord, chat_id: int) -> None:
    services, dispatcher = app.services, app.dispatcher
    private = chat_id == user.id
    replied = (
        None if private or not message.telegram_message_ids else message.telegram_message_ids[0]
    )
    texts = texts_for(user.language_code)
    reply = TelegramReply(
        app.bot,
        ChatTarget(chat_id, private=private, reply_to=replied),
        drafts=dispatcher["drafts"],
        interval=dispatcher["settings"].telegram.edit_interval(private),
        texts=texts,
    )
    with services.chat.delivering():
        async with services.sessions() as session, reply:
            outcome = await services.chat.answer_waiting(session, message, user, chat_id, reply)
            if outcome.shows_nothing:
                return
            markup = regenerate_button(texts, user.id, outcome.bot_message_id)
            ids = await reply.finish(outcome.text, texts.notes_for(outcome), markup)
            await record_delivery(session, outcome.bot_message_id, ids)


async def show_interrupted(app: BotApp, reply: MessageRecord, user: UserRecord, chat: int) -> None:
    """A reply a killed process was writing, as far as it was saved, with its note: the
    user saw it being written, and the button asks for another."""
    texts = texts_for(user.language_code)
    target = ChatTarget(chat, private=chat == user.id)
    shown = TelegramReply(
        app.bot,
        target,
        drafts=app.dispatcher["drafts"],
        interval=app.dispatcher["settings"].telegram.edit_interval(target.private),
        texts=texts,
    )
    try:
        async with app.services.sessions() as session, shown:
            markup = regenerate_button(texts, user.id, reply.id)
            ids = await shown.finish(reply.text, [texts.reply_interrupted], markup)
            await record_delivery(session, reply.id, ids)
    except (TelegramAPIError, SQLAlchemyError, StorageError) as exc:
        logger.error("an interrupted reply was not shown: %s", exc)
