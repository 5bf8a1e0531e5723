"""After a restart: answer the messages the last run accepted but had no time to answer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiogram.exceptions import TelegramAPIError
from sqlalchemy.exc import SQLAlchemyError

from bot.core.turn_writer import record_delivery
from bot.telegram.delivery import ChatTarget
from bot.telegram.reply import TelegramReply
from bot.telegram.texts import texts_for
from models.errors import ModelError
from storage.errors import StorageError

if TYPE_CHECKING:
    from bot.telegram.app import BotApp

logger = logging.getLogger(__name__)


async def answer_waiting_messages(app: BotApp) -> None:
    services, dispatcher = app.services, app.dispatcher
    async with services.sessions() as session:
        waiting = await services.chat.waiting_messages(session)
    if waiting:
        logger.info("Answering %d messages left from the last run", len(waiting))
    for message, user, chat_id in waiting:
        if services.chat.closing:
            return
        private = chat_id == user.id
        target = ChatTarget(
            chat_id,
            private=private,
            reply_to=None
            if private or not message.telegram_message_ids
            else message.telegram_message_ids[0],
        )
        texts = texts_for(user.language_code)
        reply = TelegramReply(
            app.bot,
            target,
            drafts=dispatcher["drafts"],
            interval=app.dispatcher["settings"].telegram.stream_edit_interval,
            texts=texts,
        )
        try:
            with services.chat.delivering():
                async with services.sessions() as session, reply:
                    outcome = await services.chat.answer_waiting(
                        session, message, user, chat_id, reply
                    )
                    if outcome.shows_nothing:
                        continue
                    ids = await reply.finish(outcome.text, texts.notes_for(outcome))
                    await record_delivery(session, outcome.bot_message_id, ids)
        except (TelegramAPIError, SQLAlchemyError, StorageError, ModelError) as exc:
            logger.error("a message left from the last run was not answered: %s", exc)
