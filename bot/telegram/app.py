"""Build the bot from settings and run it until asked to stop.

`serve()` takes an already loaded model, so tests can run the real bot in-process against a
fake Bot API server; `run()` does everything `python -m bot` does.
"""

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
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.core.chat import ChatService
from bot.preflight import StartupError, access_policy, bot_token, model_path
from bot.settings import Settings
from bot.telegram.access import AccessPolicy
from bot.telegram.handlers import build_routers
from bot.telegram.middlewares.access import AccessMiddleware
from bot.telegram.middlewares.database import DatabaseMiddleware
from bot.telegram.middlewares.users import UserMiddleware
from bot.telegram.reply import DraftSupport
from bot.telegram.texts import EN, RU
from models.runtime.chat_model import ChatModel

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 5.0  # seconds to store and deliver the interrupted replies
STARTUP_RETRY = 2.0


@dataclass
class BotApp:
    bot: Bot
    dispatcher: Dispatcher
    chat_service: ChatService


def build_bot(settings: Settings) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    return Bot(bot_token(settings), session=session)


def build_app(
    settings: Settings,
    *,
    model: ChatModel,
    session_factory: async_sessionmaker[AsyncSession],
    bot: Bot | None = None,
) -> BotApp:
    access = access_policy(settings)
    access.log_summary()
    chat_service = ChatService(
        model, system_prompt=settings.system_prompt, log_text=settings.log_message_text
    )
    dispatcher = Dispatcher(
        settings=settings,
        chat_service=chat_service,
        access=access,
        drafts=DraftSupport(settings.use_drafts),
    )
    dispatcher.update.outer_middleware(AccessMiddleware(access))
    dispatcher.update.outer_middleware(DatabaseMiddleware(session_factory))
    dispatcher.update.outer_middleware(UserMiddleware())
    dispatcher.include_routers(*build_routers())
    return BotApp(bot or build_bot(settings), dispatcher, chat_service)


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


async def serve(app: BotApp, stop: asyncio.Event) -> None:
    """Poll for updates until `stop` is set, then shut down gracefully:
    take no more updates, stop the running replies, store and deliver what they wrote."""
    bot, dispatcher = app.bot, app.dispatcher
    try:
        if not await _wait_for_telegram(bot, stop):
            return
        try:
            await set_commands(bot, dispatcher["access"])
        except TelegramAPIError as exc:
            logger.warning("setMyCommands failed, the command menu may be stale: %s", exc)
        polling = asyncio.create_task(
            dispatcher.start_polling(
                bot,
                handle_signals=False,
                close_bot_session=False,
                allowed_updates=dispatcher.resolve_used_update_types(),
            ),
            name="polling",
        )
        stopper = asyncio.create_task(stop.wait(), name="stop")
        await asyncio.wait({polling, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        logger.info("Shutting down")
        if not polling.done():
            await dispatcher.stop_polling()
        await app.chat_service.shutdown(SHUTDOWN_TIMEOUT)
        await polling  # re-raises if polling itself failed
    finally:
        await bot.session.close()


def load_model(settings: Settings) -> ChatModel:
    """Blocking: reads the weights. Every failure becomes one sentence for the operator."""
    from models.errors import ModelError
    from models.runtime.chat_model import load_chat_model
    from models.runtime.engine import SamplingParams
    from models.runtime.loader import ModelConfig
    from models.runtime.state_cache import StateCacheConfig

    path = model_path(settings)
    config = ModelConfig(
        model_path=path,
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_batch=settings.n_batch,
        n_gpu_layers=settings.n_gpu_layers,
        use_mlock=settings.use_mlock,
        lora_path=settings.lora_path,
        lora_scale=settings.lora_scale,
        seed=settings.seed,
    )
    sampling = SamplingParams(
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        repeat_penalty=settings.repeat_penalty,
    )
    try:
        return load_chat_model(
            config,
            template=settings.template,
            max_new_tokens=settings.max_new_tokens,
            sampling=sampling,
            state_cache=StateCacheConfig(
                enabled=settings.state_cache,
                ram_bytes=int(settings.state_cache_ram),
                disk_bytes=int(settings.state_cache_disk),
                directory=settings.state_cache_dir,
            ),
            window_low_watermark=settings.window_low_watermark,
            parallel=settings.parallel,
            kv_type=settings.kv_type,
        )
    except ModelError as exc:
        raise StartupError(str(exc)) from exc
