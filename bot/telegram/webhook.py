"""Webhook mode: Telegram posts each update to WEBHOOK_URL; this process (one of several behind
a load balancer, perhaps) serves WEBHOOK_PATH on WEBHOOK_HOST:WEBHOOK_PORT.

Telegram counts an update as delivered once it gets a 2xx answer and retries otherwise, one
chat's updates one after another. So the answer waits until the update is safely accepted:
its message stored (its place in the conversation's line released), or its handling done,
whichever comes first; the reply goes on in the background. A process that dies before that
point leaves the update to Telegram's retry, and the next message of the chat is only sent once
this one is stored, whichever process gets it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramRetryAfter
from aiogram.methods import TelegramMethod
from aiogram.types import Update
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web
from pydantic import ValidationError

from bot.preflight import StartupError, Webhook
from bot.settings import WebhookSettings

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
SET_WEBHOOK_RETRY = 2.0  # seconds between setWebhook attempts while Telegram is unreachable
# How long a stopping process lets its last webhook answers go out.
SERVER_SHUTDOWN_TIMEOUT = 5.0


class AcceptingRequestHandler(SimpleRequestHandler):
    """aiogram's handler for one bot, answering once the update is accepted (see the module
    docstring) and refusing everything while the process shuts down."""

    def __init__(self, dispatcher: Dispatcher, bot: Bot, secret: str) -> None:
        super().__init__(dispatcher, bot, handle_in_background=True, secret_token=secret)
        self._refusing = False
        self._feeding: set[asyncio.Task[bool]] = set()

    def refuse(self) -> None:
        self._refusing = True

    async def finished(self) -> None:
        """Until every update fed so far is handled."""
        while self._feeding:
            await asyncio.wait(set(self._feeding))

    async def close(self) -> None:
        """aiohttp's shutdown calls this; the bot's session belongs to `serve`, not to us."""

    async def handle(self, request: web.Request) -> web.Response:
        # Without the secret nothing is read: the caller is not Telegram.
        if not self.verify_secret(request.headers.get(SECRET_HEADER, ""), self.bot):
            return web.Response(status=401, text="Unauthorized")
        if self._refusing:
            # Telegram retries: after the restart, or on another process behind the balancer.
            return web.Response(status=503, text="Shutting down", headers={"Retry-After": "1"})
        try:
            raw = await request.json(loads=self.bot.session.json_loads)
            update = Update.model_validate(raw, context={"bot": self.bot})
        except (ValueError, ValidationError):
            return web.Response(status=400, text="Not an update")
        accepted = asyncio.Event()
        task = asyncio.create_task(self._feed(update, accepted.set), name="webhook update")
        self._feeding.add(task)
        task.add_done_callback(self._feeding.discard)
        waiter = asyncio.ensure_future(accepted.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not accepted.is_set() and task.done() and not task.result():
            # Failed before anything was kept: Telegram delivers it again later.
            return web.Response(status=500, text="Not handled")
        return web.json_response({})

    async def _feed(self, update: Update, on_accepted: Any) -> bool:
        """False when handling failed (logged, as polling does)."""
        try:
            result = await self.dispatcher.feed_update(
                self.bot, update, on_accepted=on_accepted, **self.data
            )
            if isinstance(result, TelegramMethod):
                await self.dispatcher.silent_call_request(bot=self.bot, result=result)
        except Exception:
            logger.exception("handling update %d failed", update.update_id)
            return False
        return True


class WebhookServer:
    """The Transport for webhook mode (see bot/telegram/polling.py)."""

    def __init__(
        self, bot: Bot, dispatcher: Dispatcher, webhook: Webhook, settings: WebhookSettings
    ) -> None:
        self._bot = bot
        self._dispatcher = dispatcher
        self._webhook = webhook
        self._settings = settings
        self._handler = AcceptingRequestHandler(dispatcher, bot, webhook.secret)
        self._runner: web.AppRunner | None = None
        self._never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def start(self, stop: asyncio.Event) -> None:
        """Listen first, then tell Telegram: its first post must find someone listening."""
        app = web.Application()
        self._handler.register(app, path=self._webhook.path)
        self._runner = web.AppRunner(app, shutdown_timeout=SERVER_SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        host, port = self._settings.webhook_host, self._settings.webhook_port
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError as exc:
            raise StartupError(
                f"Cannot listen on {host}:{port} ({exc.strerror}): set WEBHOOK_HOST/WEBHOOK_PORT "
                "to a free address."
            ) from exc
        logger.info("Serving the webhook on %s:%d%s", host, port, self._webhook.path)
        await set_webhook(self._bot, self._dispatcher, self._webhook, self._settings, stop)

    async def failed(self) -> None:
        await self._never  # the server itself does not stop on its own

    async def refuse(self) -> None:
        self._handler.refuse()

    async def close(self) -> None:
        """The webhook stays set: the other processes behind the balancer go on serving it."""
        await self._handler.finished()
        if self._runner is not None:
            await self._runner.cleanup()


async def set_webhook(
    bot: Bot,
    dispatcher: Dispatcher,
    webhook: Webhook,
    settings: WebhookSettings,
    stop: asyncio.Event,
) -> None:
    """setWebhook with the same arguments from every process: Telegram keeps the waiting
    updates (no drop_pending_updates), so calling it again changes nothing."""
    while not stop.is_set():
        try:
            await bot.set_webhook(
                webhook.url,
                secret_token=webhook.secret,
                max_connections=settings.webhook_max_connections,
                allowed_updates=dispatcher.resolve_used_update_types(),
                drop_pending_updates=False,
            )
        except TelegramBadRequest as exc:
            raise StartupError(f"Telegram refused WEBHOOK_URL: {exc.message}.") from exc
        except TelegramRetryAfter as exc:  # several processes starting at once
            delay: float = exc.retry_after
        except TelegramAPIError as exc:
            logger.warning("setWebhook failed (%s); retrying", exc)
            delay = SET_WEBHOOK_RETRY
        else:
            logger.info("Webhook set")
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
