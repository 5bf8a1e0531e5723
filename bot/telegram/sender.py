"""The one way out to Telegram: a request middleware on the Bot's session, so every Bot API call
(streamed replies, command answers, callback answers, the start-up calls) passes through it.

It keeps to Telegram's flood limits per chat (about one message a second in a private chat,
20 a minute in a group) instead of running into them, waits out a 429 `retry_after` and sends
the call again, shows one typing indicator per chat however many replies are waiting, and
turns text Telegram would refuse (lone UTF-16 surrogates) into a visible replacement mark.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import TelegramMethod
from aiogram.methods.base import Response, TelegramType
from pydantic import BaseModel

from bot.telegram.formatting import visible_text

if TYPE_CHECKING:
    from aiogram import Bot

    from bot.settings import Settings

logger = logging.getLogger(__name__)

# Telegram's documented ceiling for one bot across all chats.
GLOBAL_PER_SECOND = 30
# Waiting out 429s stops after this long in total: then the caller gets the TelegramRetryAfter
# (a streamed reply keeps its text and reports it; nothing waits for hours).
RETRY_PATIENCE = 120.0
# Telegram shows a chat action for 5 seconds, or until the bot's next message in the chat.
ACTION_SHOWN = 4.5
ACTION_MIN_GAP = 1.0
# A draft (the streamed preview) or a chat action refused with 429 is not sent again after
# the wait: it would show something already out of date. The chat still waits out the 429.
EPHEMERAL = frozenset(("sendMessageDraft", "sendChatAction"))
MAX_CHATS = 1000  # past this many, chats idle for the limits' window are forgotten


def _counts_as_message(api_method: str) -> bool:
    """Calls that put or change a message in a chat: Telegram's flood limits count these.

    sendChatAction creates nothing and is coalesced instead (one indicator per chat).
    sendMessageDraft (private chats only) is Telegram's streaming preview: it leaves no message
    in the chat and exists to be updated often, so it is not held to one a second; it still
    waits while the chat is under a 429. deleteMessage, answerCallbackQuery and the bot's own
    settings calls send nothing to the chat's history and only get the 429 handling."""
    if api_method in ("sendChatAction", "sendMessageDraft"):
        return False
    return api_method.startswith(("send", "edit", "copyMessage", "forwardMessage"))


@dataclass
class _Chat:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sent: deque[float] = field(default_factory=deque)  # when its recent messages went out
    blocked_until: float = 0.0  # Telegram's 429 for this chat ends then
    last_message: float = float("-inf")
    actions: dict[tuple[str, int | None], float] = field(default_factory=dict)


class TelegramSender(BaseRequestMiddleware):
    def __init__(
        self,
        *,
        message_interval: float = 1.0,
        group_per_minute: int = 20,
        minute: float = 60.0,
        patience: float = RETRY_PATIENCE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = message_interval
        self._group_limit = group_per_minute
        self._minute = minute  # the group limit's window; tests may shorten it
        self._patience = patience
        self._clock = clock
        self._chats: dict[int | str, _Chat] = {}
        self._global: deque[float] = deque()
        self._global_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> TelegramSender:
        return cls(
            message_interval=settings.telegram.chat_message_interval,
            group_per_minute=settings.telegram.group_messages_per_minute,
        )

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        method = _visible(method)
        api_method = method.__api_method__
        chat_id = getattr(method, "chat_id", None)
        if not isinstance(chat_id, int | str) or isinstance(chat_id, bool):
            return await self._send(make_request, bot, method, None)
        chat = self._chat(chat_id)
        if api_method == "sendChatAction":
            key = (str(getattr(method, "action", "")), getattr(method, "message_thread_id", None))
            shown = chat.actions.get(key, float("-inf"))
            age = self._clock() - shown
            # Still on screen (a message of the bot ends it early), or just asked for by
            # another reply in this chat: one indicator per chat, at most once a second.
            if age < ACTION_MIN_GAP or (shown > chat.last_message and age < ACTION_SHOWN):
                return cast(Response[TelegramType], True)
            chat.actions[key] = self._clock()
            return await self._send(make_request, bot, method, chat)
        if not _counts_as_message(api_method):
            return await self._send(make_request, bot, method, chat)
        # One message at a time per chat, in the order they were asked for.
        async with chat.lock:
            group = _is_group(chat_id)
            await self._wait_turn(chat, group=group)
            try:
                return await self._send(make_request, bot, method, chat)
            finally:
                # Counted from the answer: Telegram saw the call by then, however long the
                # way there took, so the next one cannot arrive too early.
                chat.last_message = self._clock()
                chat.sent.append(chat.last_message)
                if not group:
                    while len(chat.sent) > 1:
                        chat.sent.popleft()

    def _chat(self, chat_id: int | str) -> _Chat:
        chat = self._chats.get(chat_id)
        if chat is None:
            if len(self._chats) >= MAX_CHATS:
                self._forget_idle_chats()
            chat = self._chats[chat_id] = _Chat()
        return chat

    def _forget_idle_chats(self) -> None:
        """Chats with nothing in flight and nothing sent within the limits' window."""
        now = self._clock()
        for chat_id, chat in list(self._chats.items()):
            recent = max(chat.sent[-1] if chat.sent else float("-inf"), chat.blocked_until)
            if not chat.lock.locked() and recent < now - self._minute:
                del self._chats[chat_id]

    async def _wait_turn(self, chat: _Chat, *, group: bool) -> None:
        while True:
            now = self._clock()
            last = chat.sent[-1] if chat.sent else float("-inf")
            wait = max(chat.blocked_until, last + self._interval)
            if group:
                while chat.sent and chat.sent[0] <= now - self._minute:
                    chat.sent.popleft()
                if len(chat.sent) >= self._group_limit:
                    wait = max(wait, chat.sent[0] + self._minute)
            if wait <= now:
                break
            await asyncio.sleep(wait - now)
        await self._wait_global()

    async def _wait_global(self) -> None:
        async with self._global_lock:
            while True:
                now = self._clock()
                while self._global and self._global[0] <= now - 1.0:
                    self._global.popleft()
                if len(self._global) < GLOBAL_PER_SECOND:
                    self._global.append(now)
                    return
                await asyncio.sleep(self._global[0] + 1.0 - now)

    async def _send(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
        chat: _Chat | None,
    ) -> Response[TelegramType]:
        give_up = self._clock() + self._patience
        while True:
            if chat is not None and chat.blocked_until > self._clock():
                await asyncio.sleep(chat.blocked_until - self._clock())
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                resume = self._clock() + exc.retry_after
                if chat is not None:
                    chat.blocked_until = max(chat.blocked_until, resume)
                if method.__api_method__ in EPHEMERAL:
                    raise  # stale by then: the caller sends a newer one when its turn comes
                if resume > give_up:
                    logger.warning(
                        "Telegram asked to wait %d s before %s; giving up after %.0f s",
                        exc.retry_after,
                        method.__api_method__,
                        self._patience,
                    )
                    raise
                logger.info(
                    "Telegram asked to wait %d s before %s", exc.retry_after, method.__api_method__
                )
                await asyncio.sleep(max(0.0, resume - self._clock()))


def _is_group(chat_id: int | str) -> bool:
    # Users' (private chats') ids are positive; groups, supergroups and channels are negative
    # or an @username.
    return not isinstance(chat_id, int) or chat_id < 0


def _visible(method: TelegramMethod[TelegramType]) -> TelegramMethod[TelegramType]:
    cleaned = _clean(method)
    return cast(TelegramMethod[TelegramType], cleaned)


def _clean(value: Any) -> Any:
    """`value` with every string made acceptable to Telegram; unchanged objects are reused."""
    if isinstance(value, str):
        return visible_text(value)
    if isinstance(value, list | tuple):
        items = [_clean(item) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    if isinstance(value, BaseModel):
        changed = {}
        for name, old in value:
            new = _clean(old)
            if new is not old:
                changed[name] = new
        return value.model_copy(update=changed) if changed else value
    return value
