"""The Telegram messages of one reply: drafts, sent and edited messages, pacing and retries."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aiogram import Bot
from aiogram.enums import ParseMode
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import EditMessageText, SendMessage, SendMessageDraft, TelegramMethod
from aiogram.types import InlineKeyboardMarkup, LinkPreviewOptions, ReplyParameters

from bot.telegram.formatting import MESSAGE_LIMIT, to_html

logger = logging.getLogger(__name__)

T = TypeVar("T")
FINAL_PATIENCE = 150.0  # seconds a finished reply waits for Telegram to come back
NOTE_ROOM = 300  # room kept in the last message for the notes under a reply


class DraftSupport:
    """Shared across replies: once the Bot API refuses drafts (or rich messages), stop asking.
    Hands out the draft ids, which only need to differ between the replies of one chat, and
    knows which rich draft of a chat shows a Stop button and which ones the user stopped."""

    def __init__(self, enabled: bool, rich: bool = False) -> None:
        self.enabled = enabled
        self.rich = rich
        self._ids = itertools.count(1)
        self.running: dict[int, int] = {}  # chat id -> draft id showing the Stop button
        self._stopped: set[tuple[int, int]] = set()

    def next_id(self) -> int:
        return next(self._ids)

    def stop(self, chat_id: int, draft_id: int) -> bool:
        """The Stop button of a draft was pressed; True if it is the chat's running reply."""
        if self.running.get(chat_id) != draft_id:
            return False
        del self.running[chat_id]
        self._stopped.add((chat_id, draft_id))
        return True

    def stopped(self, chat_id: int, draft_id: int) -> bool:
        return (chat_id, draft_id) in self._stopped

    def finished(self, chat_id: int, draft_id: int) -> None:
        if self.running.get(chat_id) == draft_id:
            del self.running[chat_id]
        self._stopped.discard((chat_id, draft_id))


@dataclass(frozen=True)
class ChatTarget:
    chat_id: int
    private: bool = True
    reply_to: int | None = None  # groups: the message answered
    thread_id: int | None = None  # forum topics


@dataclass(frozen=True)
class Payload:
    text: str
    parse_mode: str | None = None
    source: str | None = None  # the Markdown the text was made from, for rich messages
    markup: InlineKeyboardMarkup | None = None  # buttons under a finished message
    reasoning: str = ""  # a reasoning model's thinking, for the thinking block of a rich draft


@dataclass
class _Slot:
    """One Telegram message of the reply (in edit mode) and what it shows now."""

    message_id: int | None = None
    shown: tuple[str, str | None, InlineKeyboardMarkup | None] | None = None


@dataclass
class _Draft:
    active: bool
    draft_id: int
    shown: str | None = None


@dataclass
class _Pace:
    interval: float
    not_before: float = 0.0  # monotonic time before which Telegram asked us to wait
    last_send: float = float("-inf")
    slots: list[_Slot] = field(default_factory=lambda: [_Slot()])


def bad_entities(exc: TelegramBadRequest) -> bool:
    text = exc.message.lower()
    # "text is empty": markup that renders to nothing, such as an empty code block.
    return "entities" in text or "tag" in text or "text is empty" in text


def _not_modified(exc: TelegramBadRequest) -> bool:
    return "message is not modified" in exc.message.lower()


def _message_gone(exc: TelegramBadRequest) -> bool:
    # The user deleted the message being edited, or it is too old to edit.
    text = exc.message.lower()
    return "message to edit not found" in text or "message can't be edited" in text


class Transport:
    def __init__(self, bot: Bot, target: ChatTarget, drafts: DraftSupport, interval: float) -> None:
        self._bot = bot
        self.target = target
        self._drafts = drafts
        self._draft = _Draft(target.private and drafts.enabled, drafts.next_id())
        self._pace = _Pace(interval)
        self.message_ids: list[int] = []
        self.blocked = False  # the user blocked the bot: nothing more can be delivered

    @property
    def limit(self) -> int:
        """The most characters one message of this reply may carry."""
        return MESSAGE_LIMIT

    @property
    def last_slot(self) -> int:
        return len(self._pace.slots) - 1

    def open_slot(self) -> None:
        self._pace.slots.append(_Slot())

    def next_allowed(self) -> float:
        return max(self._pace.not_before, self._pace.last_send + self._pace.interval)

    def release(self) -> None:
        """The reply is over: forget what it left in the shared draft support."""
        self._drafts.finished(self.target.chat_id, self._draft.draft_id)

    def hold_back(self) -> None:
        """After a failed update, wait a little longer before the next one: a persistent
        error must not be met with the same request every interval."""
        self._pace.not_before = time.monotonic() + self._pace.interval * 2

    async def _call(self, method: TelegramMethod[T]) -> T:
        try:
            result = await self._bot(method)
        except TelegramRetryAfter as exc:
            self._pace.not_before = time.monotonic() + exc.retry_after
            logger.info("Telegram asked to wait %s s", exc.retry_after)
            raise
        finally:
            self._pace.last_send = time.monotonic()
        return result

    async def show(self, payload: Payload) -> None:
        """An intermediate view of the last slot: a draft, or a sent then edited message."""
        if self._draft.active:
            await self._show_draft(payload)
        else:
            await self._put(payload, self.last_slot)

    async def _show_draft(self, payload: Payload) -> None:
        target = self.target
        if payload.text == self._draft.shown:
            return
        try:
            await self._call(
                SendMessageDraft(
                    chat_id=target.chat_id,
                    draft_id=self._draft.draft_id,
                    text=payload.text,
                    parse_mode=payload.parse_mode,
                    message_thread_id=target.thread_id,
                )
            )
        except TelegramBadRequest as exc:
            if payload.parse_mode is not None and bad_entities(exc):
                raise
            # Refused in this chat only (TEXTDRAFT_PEER_INVALID...): other chats keep drafts.
            logger.info("no drafts in chat %d (%s); editing a message", target.chat_id, exc)
            self._draft.active = False
            await self._put(payload, self.last_slot)
            return
        except TelegramNotFound as exc:
            # A Bot API server without the method: stop asking for every reply.
            logger.info("drafts refused (%s); streaming by message edits instead", exc)
            self._draft.active = False
            self._drafts.enabled = False
            await self._put(payload, self.last_slot)
            return
        self._draft.shown = payload.text

    async def _put(self, payload: Payload, index: int) -> None:
        """Send slot `index` as a new message, or edit it when it exists and changed."""
        slot, target = self._pace.slots[index], self.target
        wanted = (payload.text, payload.parse_mode, payload.markup)
        if slot.shown == wanted:
            return
        if slot.message_id is None:
            reply = (
                ReplyParameters(message_id=target.reply_to, allow_sending_without_reply=True)
                if target.reply_to is not None and not self.message_ids
                else None
            )
            message = await self._call(
                SendMessage(
                    chat_id=target.chat_id,
                    text=payload.text,
                    parse_mode=payload.parse_mode,
                    message_thread_id=target.thread_id,
                    reply_parameters=reply,
                    link_preview_options=LinkPreviewOptions(is_disabled=True),
                    reply_markup=payload.markup,
                )
            )
            slot.message_id = message.message_id
            self.message_ids.append(message.message_id)
        else:
            try:
                await self._call(
                    EditMessageText(
                        chat_id=target.chat_id,
                        message_id=slot.message_id,
                        text=payload.text,
                        parse_mode=payload.parse_mode,
                        link_preview_options=LinkPreviewOptions(is_disabled=True),
                        reply_markup=payload.markup,
                    )
                )
            except TelegramBadRequest as exc:
                if _message_gone(exc):
                    # Carry on in a new message rather than lose the reply.
                    self.message_ids.remove(slot.message_id)
                    self._pace.slots[index] = _Slot()
                    await self._put(payload, index)
                    return
                if not _not_modified(exc):
                    raise
        slot.shown = wanted

    async def deliver(
        self,
        piece: str,
        note_html: str,
        index: int,
        markup: InlineKeyboardMarkup | None = None,
    ) -> None:
        """Put one finished message in place, whatever it takes within reason."""
        if self.blocked:
            return
        while len(self._pace.slots) <= index:
            self.open_slot()
        html = to_html(piece) if piece else ""
        html_text = "\n\n".join(p for p in (html, note_html) if p)
        html_payload = Payload(html_text, ParseMode.HTML, markup=markup)
        plain_notes = note_html.replace("<i>", "").replace("</i>", "")
        plain_payload = Payload("\n\n".join(p for p in (piece, plain_notes) if p), markup=markup)
        if self._draft.active:
            # Drafts are previews only: every finished piece goes as a real message.
            self._pace.slots[index] = _Slot()
        await self._retrying(lambda: self._put_with_fallback(html_payload, plain_payload, index))

    async def _put_with_fallback(self, html: Payload, plain: Payload, index: int) -> None:
        try:
            await self._put(html, index)
        except TelegramBadRequest as exc:
            if not bad_entities(exc):
                raise
            logger.info("Telegram rejected the formatting (%s); sending plain text", exc)
            await self._put(plain, index)

    async def _retrying(self, action: Callable[[], Awaitable[None]]) -> None:
        """Retry through an outage. 429s are the sender's (bot/telegram/sender.py): it has
        waited them out already, so one that still comes through ends the attempt."""
        delay = 1.0
        # A home server's connection can drop for a minute: keep the finished reply until then.
        give_up = time.monotonic() + FINAL_PATIENCE
        while True:
            wait = self.next_allowed() - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await action()
                return
            except (TelegramNetworkError, TelegramServerError) as exc:
                if time.monotonic() + delay > give_up:
                    raise
                logger.warning("Telegram unavailable (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
