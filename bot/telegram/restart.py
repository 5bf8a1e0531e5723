"""After a restart: send the replies the last run stored but never sent, then answer the
messages it accepted but had no time to answer."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiogram.exceptions import TelegramAPIError
from sqlalchemy.exc import SQLAlchemyError

from bot.telegram.delivery import ChatTarget
from bot.telegram.final_reply import outcome_of, send_final
from bot.telegram.reply import TelegramReply
from bot.telegram.texts import texts_for
from models.errors import ModelError
from storage.errors import StorageError
from storage.records import MessageRecord, UserRecord

if TYPE_CHECKING:
    from bot.telegram.app import BotApp

logger = logging.getLogger(__name__)


async def start_answering_waiting(app: BotApp) -> asyncio.Task[None] | None:
    """Before polling starts: the replies the last run left unsent go to their chats (one
    process: the shared sweep sends those of gone processes), then one task per message left
    from the last run, each in its conversation's line already, so a new message is answered
    after them."""
    chat = app.services.chat
    if not chat.coordination.shared:
        async with app.services.sessions() as session:
            unsent = await chat.undelivered_replies(session)
        if unsent:
            logger.info("Sending %d replies the last run stored but did not send", len(unsent))
        for item in unsent:
            await send_unsent(app, *item)
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
            if not outcome.shows_nothing:
                await send_final(services.chat, session, reply, outcome, texts, user.id)


async def send_unsent(app: BotApp, reply: MessageRecord, user: UserRecord, chat: int) -> None:
    """A reply stored but never sent (its process was killed first, or cut while writing it:
    the user saw it being written), as far as it was saved, with the note its status tells
    and the button that asks for another."""
    texts = texts_for(user.language_code)
    target = ChatTarget(chat, private=chat == user.id)
    shown = TelegramReply(
        app.bot,
        target,
        drafts=app.dispatcher["drafts"],
        interval=app.dispatcher["settings"].telegram.edit_interval(target.private),
        texts=texts,
    )
    chat_service = app.services.chat
    try:
        async with app.services.sessions() as session, shown:
            await send_final(chat_service, session, shown, outcome_of(reply), texts, user.id)
    except (SQLAlchemyError, StorageError) as exc:
        logger.error("a reply left unsent was not sent: %s", exc)
    finally:
        await chat_service.not_delivered(reply.id)  # sent or not, this process lets it go
