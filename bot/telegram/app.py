"""Build the Telegram bot on the shared services and run it until asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramUnauthorizedError
from aiogram.types import BotCommand, BotCommandScopeChat, BotCommandScopeDefault

from bot import preflight
from bot.core.ordering import TurnOrder
from bot.lifecycle import Services
from bot.preflight import StartupError, access_policy, bot_token
from bot.settings import Settings
from bot.telegram.access import AccessPolicy
from bot.telegram.delivery import DraftSupport
from bot.telegram.handlers import build_routers
from bot.telegram.middlewares.access import AccessMiddleware
from bot.telegram.middlewares.database import DatabaseMiddleware
from bot.telegram.middlewares.ordering import OrderingMiddleware
from bot.telegram.middlewares.storage_failures import StorageFailureMiddleware
from bot.telegram.middlewares.updates import UpdateOnceMiddleware
from bot.telegram.middlewares.users import UserMiddleware
from bot.telegram.polling import Polling, Transport
from bot.telegram.restart import start_answering_waiting
from bot.telegram.sender import TelegramSender
from bot.telegram.sweep import Sweeper
from bot.telegram.texts import EN, RU
from bot.telegram.typing_indicator import TypingIndicators
from bot.telegram.webhook import WebhookServer

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 10.0  # seconds to store and deliver the interrupted replies
STARTUP_RETRY = 2.0


@dataclass
class BotApp:
    bot: Bot
    dispatcher: Dispatcher
    services: Services


def build_bot(settings: Settings) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram.telegram_api_url))
    session.middleware(TelegramSender.from_settings(settings))
    return Bot(bot_token(settings), session=session)


def build_app(settings: Settings, services: Services, bot: Bot | None = None) -> BotApp:
    """The Dispatcher's workflow data is what handlers receive as typed parameters."""
    access = access_policy(settings)
    access.log_summary()
    bot = bot or build_bot(settings)
    dispatcher = Dispatcher(
        settings=settings,
        chat_service=services.chat,
        access=access,
        drafts=DraftSupport(settings.telegram.use_drafts, settings.telegram.use_rich_messages),
        typing=TypingIndicators(bot),
    )
    # The ordering middleware must come first: it takes each update's place in line.
    dispatcher.update.outer_middleware(OrderingMiddleware(TurnOrder(), services.chat))
    dispatcher.update.outer_middleware(StorageFailureMiddleware())
    if services.chat.coordination.shared:
        dispatcher.update.outer_middleware(UpdateOnceMiddleware(services.chat))
    dispatcher.update.outer_middleware(AccessMiddleware(access, services.sessions))
    dispatcher.update.outer_middleware(DatabaseMiddleware(services.sessions))
    dispatcher.update.outer_middleware(UserMiddleware())
    dispatcher.include_routers(*build_routers())
    return BotApp(bot, dispatcher, services)


async def set_commands(bot: Bot, access: AccessPolicy) -> None:
    """The command menu in Russian (default) and English; admins also see /status."""
    languages = ((RU, None), (EN, "en"))
    for texts, language in languages:
        commands = [BotCommand(command=name, description=text) for name, text in texts.commands]
        await bot.set_my_commands(commands, BotCommandScopeDefault(), language_code=language)
    for admin_id in access.admins.ids:
        for texts, language in languages:
            commands = [
                BotCommand(command=name, description=text)
                for name, text in (*texts.commands, ("status", texts.status_command))
            ]
            try:
                await bot.set_my_commands(
                    commands,
                    BotCommandScopeChat(chat_id=admin_id),
                    language_code=language,
                )
            except TelegramBadRequest as exc:  # an admin who never opened the bot's chat
                logger.info("no admin menu for %d: %s", admin_id, exc)
                break


async def _wait_for_telegram(bot: Bot, stop: asyncio.Event) -> bool:
    """getMe until the Bot API answers (it may be down when we start); False if told to stop."""
    while not stop.is_set():
        try:
            me = await bot.me()
        except TelegramUnauthorizedError as exc:
            raise StartupError(
                "Telegram rejected BOT_TOKEN: copy the token from @BotFather again."
            ) from exc
        except TelegramAPIError as exc:
            logger.warning("Telegram Bot API not reachable yet (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STARTUP_RETRY)
            continue
        logger.info("Connected as @%s (id %d)", me.username, me.id)
        return True
    return False


def transport_for(app: BotApp) -> Transport:
    """Webhook mode when WEBHOOK_URL is set, long polling otherwise."""
    settings: Settings = app.dispatcher["settings"]
    webhook = preflight.webhook(settings)
    if webhook is None:
        return Polling(app.bot, app.dispatcher)
    return WebhookServer(app.bot, app.dispatcher, webhook, settings.webhook)


async def serve(app: BotApp, stop: asyncio.Event) -> None:
    """Take updates (polling or webhook) until `stop` is set, then shut down gracefully: take
    no more updates, stop the running replies, store and deliver what they wrote, keep the
    waiting messages for the next start, which answers them."""
    bot, dispatcher = app.bot, app.dispatcher
    try:
        if not await _wait_for_telegram(bot, stop):
            return
        try:
            await set_commands(bot, dispatcher["access"])
        except TelegramAPIError as exc:
            logger.warning("setMyCommands failed, the command menu may be stale: %s", exc)
        backlog = await start_answering_waiting(app)
        transport = transport_for(app)
        # With several processes, the work of a gone one is picked up by the others.
        sweeper = Sweeper(app) if app.services.chat.coordination.shared else None
        try:
            await transport.start(stop)
            if sweeper is not None:
                sweeper.start()
            failed = asyncio.create_task(transport.failed(), name="transport")
            stopper = asyncio.create_task(stop.wait(), name="stop")
            await asyncio.wait({failed, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            failed.cancel()
            logger.info("Shutting down")
            await transport.refuse()
            if sweeper is not None:
                await sweeper.close()
            async with app.services.sessions() as session:
                await app.services.chat.shutdown(session, SHUTDOWN_TIMEOUT)
            if backlog is not None:
                await backlog
        finally:
            if sweeper is not None:
                await sweeper.close()
            await transport.close()  # re-raises if polling itself failed
        await dispatcher["typing"].close()
    finally:
        await bot.session.close()
