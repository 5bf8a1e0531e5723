"""How updates reach the bot: long polling (one process per bot), or a webhook (webhook.py).

Both take the same four steps in `serve`: start, run until stopped or failed, refuse new
updates while the running replies are wound down, close."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from aiogram import Bot, Dispatcher
from aiogram.exceptions import TelegramAPIError

logger = logging.getLogger(__name__)


class Transport(Protocol):
    async def start(self, stop: asyncio.Event) -> None:
        """Begin taking updates (returns once they flow, or at once when told to stop)."""

    async def failed(self) -> None:
        """Returns (or raises) only when updates can no longer be taken."""

    async def refuse(self) -> None:
        """Take no new updates; those being handled go on."""

    async def close(self) -> None:
        """After the replies are wound down: release everything, re-raise a failure."""


class Polling:
    def __init__(self, bot: Bot, dispatcher: Dispatcher) -> None:
        self._bot = bot
        self._dispatcher = dispatcher
        self._task: asyncio.Task[None] | None = None

    async def start(self, stop: asyncio.Event) -> None:
        await _leave_webhook_mode(self._bot)
        self._task = asyncio.create_task(
            self._dispatcher.start_polling(
                self._bot,
                handle_signals=False,
                close_bot_session=False,
                allowed_updates=self._dispatcher.resolve_used_update_types(),
            ),
            name="polling",
        )

    async def failed(self) -> None:
        assert self._task is not None
        await asyncio.wait({self._task})  # its error is raised by close()

    async def refuse(self) -> None:
        if self._task is not None and not self._task.done():
            await self._dispatcher.stop_polling()

    async def close(self) -> None:
        if self._task is not None:
            await self._task  # re-raises if polling itself failed


async def _leave_webhook_mode(bot: Bot) -> None:
    """Telegram refuses getUpdates while a webhook is set: a bot switched back from webhook
    mode removes it (the updates waiting for it stay and are polled)."""
    try:
        info = await bot.get_webhook_info()
        if info.url:
            logger.warning("Removing the webhook set by an earlier run to poll instead")
            await bot.delete_webhook(drop_pending_updates=False)
    except TelegramAPIError as exc:
        logger.warning("could not check for a webhook, polling may be refused: %s", exc)
