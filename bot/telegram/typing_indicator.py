"""One "typing…" indicator per chat, however many replies wait there.

Telegram shows the indicator for about five seconds per `sendChatAction`; aiogram's
`ChatActionSender` repeats it. A flood of queued messages in one chat must not start one
sender each: every reply that waits for its first words holds the chat's one sender, which
stops when the last of them has started.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiogram import Bot
from aiogram.utils.chat_action import ChatActionSender

from bot.telegram.delivery import ChatTarget

Chat = tuple[int, int | None]  # chat id, forum topic


class TypingIndicators:
    def __init__(self, bot: Bot) -> None:
        self._bot = bot
        self._holders: dict[Chat, set[asyncio.Event]] = {}
        self._changed: dict[Chat, asyncio.Event] = {}
        self._senders: dict[Chat, asyncio.Task[None]] = {}

    @contextlib.asynccontextmanager
    async def until(self, target: ChatTarget, started: asyncio.Event) -> AsyncIterator[None]:
        """Show typing in the chat until `started` is set or the block ends."""
        chat = (target.chat_id, target.thread_id)
        holders = self._holders.setdefault(chat, set())
        changed = self._changed.setdefault(chat, asyncio.Event())
        holders.add(started)
        watcher = asyncio.create_task(started.wait())
        watcher.add_done_callback(lambda _: changed.set())
        if chat not in self._senders:
            self._senders[chat] = asyncio.create_task(self._send(chat), name=f"typing-{chat[0]}")
        try:
            yield
        finally:
            holders.discard(started)
            watcher.cancel()
            changed.set()

    async def _send(self, chat: Chat) -> None:
        changed = self._changed[chat]
        try:
            async with ChatActionSender.typing(
                chat_id=chat[0], bot=self._bot, message_thread_id=chat[1]
            ):
                while any(not event.is_set() for event in self._holders.get(chat, ())):
                    await changed.wait()
                    changed.clear()
        finally:
            del self._senders[chat]
            if not self._holders.get(chat):
                self._holders.pop(chat, None)
                self._changed.pop(chat, None)

    async def close(self) -> None:
        for task in list(self._senders.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
