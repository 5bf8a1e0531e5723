"""Show a reply in Telegram while the model writes it.

Private chats get Telegram's native drafts (`sendMessageDraft`) and one real `sendMessage` at
the end. Where drafts are refused (groups, a Bot API server without them) one message is sent
and then edited, at most once per `interval`. Nothing unchanged is ever sent again, a 429 is
waited out before the newest text goes, and the final text is always delivered, split into
several messages past Telegram's length limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from html import escape
from typing import TypeVar

from aiogram import Bot
from aiogram.enums import ChatAction, ParseMode
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import EditMessageText, SendMessage, SendMessageDraft, TelegramMethod
from aiogram.types import LinkPreviewOptions, Message, ReplyParameters

from bot.telegram.formatting import MESSAGE_LIMIT, next_piece, split_message, to_html, utf16_len

logger = logging.getLogger(__name__)

T = TypeVar("T")
TYPING_EVERY = 4.5  # Telegram shows the typing action for about 5 seconds
FINAL_ATTEMPTS = 6
FINAL_PATIENCE = 150.0  # seconds a finished reply waits for Telegram to come back
NOTE_ROOM = 300  # room kept in the last message for the notes under a reply
_draft_ids = itertools.count(1)


class DraftSupport:
    """Shared across replies: once the Bot API refuses drafts, stop asking."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled


@dataclass
class _Slot:
    """One Telegram message of the reply (in edit mode) and what it shows now."""

    message_id: int | None = None
    shown: tuple[str, str | None] | None = None  # (text, parse_mode)


@dataclass
class _Payload:
    text: str
    parse_mode: str | None

    @classmethod
    def html(cls, markdown: str) -> _Payload:
        return cls(to_html(markdown), ParseMode.HTML)


class _Deferred(Exception):
    """An intermediate update could not go now; it will be retried with newer text."""


def _not_modified(exc: TelegramBadRequest) -> bool:
    return "message is not modified" in exc.message.lower()


def _bad_entities(exc: TelegramBadRequest) -> bool:
    text = exc.message.lower()
    # "text is empty": markup that renders to nothing, such as an empty code block.
    return "entities" in text or "tag" in text or "text is empty" in text


def _message_gone(exc: TelegramBadRequest) -> bool:
    # The user deleted the message being edited, or it is too old to edit.
    text = exc.message.lower()
    return "message to edit not found" in text or "message can't be edited" in text


class TelegramReply:
    def __init__(
        self,
        bot: Bot,
        chat_id: int,
        *,
        private: bool,
        drafts: DraftSupport,
        interval: float,
        reply_to: int | None = None,
        thread_id: int | None = None,
    ) -> None:
        self._bot = bot
        self._chat_id = chat_id
        self._drafts = drafts
        self._use_drafts = private and drafts.enabled
        self._interval = interval
        self._reply_to = reply_to
        self._thread_id = thread_id
        self._draft_id = next(_draft_ids)
        self._text = ""  # the newest full text (or a status line before the reply starts)
        self._is_status = False
        self._frozen = 0  # characters of `_text` already closed into finished messages
        self._carry = ""  # a code fence reopened at the start of the next message
        self._blocked = False  # the user blocked the bot: nothing more can be delivered
        self._slots: list[_Slot] = [_Slot()]
        self._message_ids: list[int] = []
        self._draft_shown: str | None = None
        self._not_before = 0.0  # monotonic time before which Telegram asked us to wait
        self._last_send = float("-inf")
        self._dirty = asyncio.Event()
        self._finishing = asyncio.Event()
        self._got_text = asyncio.Event()
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"reply-{chat_id}")
        self._typing = asyncio.create_task(self._typing_loop(), name=f"typing-{chat_id}")

    # The interface the chat service drives.

    async def show_status(self, text: str) -> None:
        """A line shown before the reply starts, such as the place in the queue."""
        if self._got_text.is_set():
            return
        self._text, self._is_status = text, True
        self._dirty.set()

    async def update(self, text: str) -> None:
        if not text.strip():
            return
        self._text, self._is_status = text, False
        self._got_text.set()
        self._dirty.set()

    async def finish(self, text: str, notes: list[str]) -> list[int]:
        """Deliver the whole text; returns the ids of every message that carries it."""
        self._got_text.set()
        self._finishing.set()
        self._dirty.set()
        await self._flusher
        self._typing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._typing
        if self._blocked:
            return []
        self._text, self._is_status = text, False
        rest = text[self._frozen :]
        body = (self._carry + rest).strip() if rest.strip() else ""
        note_html = "\n\n".join(f"<i>{escape(note)}</i>" for note in notes)
        pieces = split_message(body, MESSAGE_LIMIT - NOTE_ROOM) if body else []
        if not pieces and not note_html:
            note_html = "…"
        if not pieces:
            pieces = [""]
        base = len(self._slots) - 1
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            await self._deliver(piece, note_html if last else "", base + index)
        return list(self._message_ids)

    async def close(self) -> None:
        """Stop the background tasks without delivering anything (on errors)."""
        for task in (self._flusher, self._typing):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # Background work.

    async def _typing_loop(self) -> None:
        while not self._got_text.is_set():
            with contextlib.suppress(TelegramAPIError):
                await self._bot.send_chat_action(
                    self._chat_id, ChatAction.TYPING, message_thread_id=self._thread_id
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._got_text.wait(), TYPING_EVERY)

    def _next_allowed(self) -> float:
        return max(self._not_before, self._last_send + self._interval)

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            if self._finishing.is_set():
                return
            delay = self._next_allowed() - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._finishing.wait(), delay)
                if self._finishing.is_set():
                    return
            self._dirty.clear()
            try:
                await self._flush(self._text, self._is_status)
            except _Deferred as deferred:
                logger.debug("update deferred: %s", deferred)
                self._dirty.set()
            except TelegramForbiddenError as exc:
                logger.info("chat %d cannot be written to (%s)", self._chat_id, exc)
                self._blocked = True
                return
            except TelegramAPIError as exc:
                # A lost intermediate update is harmless: the final text follows anyway.
                logger.warning("intermediate update failed: %s", exc)

    async def _flush(self, text: str, is_status: bool) -> None:
        if is_status:
            await self._show(_Payload(escape(text), ParseMode.HTML), len(self._slots) - 1)
            return
        body = self._carry + text[self._frozen :]
        # Text past the limit closes the current message for good and opens the next one.
        while utf16_len(body.strip()) > MESSAGE_LIMIT - NOTE_ROOM:
            piece, used, carry = next_piece(body, MESSAGE_LIMIT - NOTE_ROOM)
            await self._deliver(piece, "", len(self._slots) - 1)
            self._slots.append(_Slot())
            self._frozen += used - len(self._carry)
            self._carry = carry
            body = self._carry + text[self._frozen :]
        if body.strip():
            await self._show(_Payload.html(body.strip()), len(self._slots) - 1)

    # Talking to Telegram.

    async def _call(self, method: TelegramMethod[T]) -> T:
        try:
            result = await self._bot(method)
        except TelegramRetryAfter as exc:
            self._not_before = time.monotonic() + exc.retry_after
            logger.info("Telegram asked to wait %s s", exc.retry_after)
            raise
        finally:
            self._last_send = time.monotonic()
        return result

    async def _show(self, payload: _Payload, index: int) -> None:
        """An intermediate view of slot `index`: a draft, or a sent then edited message."""
        try:
            if self._use_drafts:
                await self._show_draft(payload)
            else:
                await self._put(payload, index)
        except TelegramRetryAfter as exc:
            raise _Deferred("retry after") from exc
        except (TelegramNetworkError, TelegramServerError) as exc:
            self._not_before = time.monotonic() + self._interval * 2
            raise _Deferred(str(exc)) from exc
        except TelegramBadRequest as exc:
            if payload.parse_mode is None or not _bad_entities(exc):
                raise
            # A half-written reply can hold markup Telegram rejects: show it as plain text.
            plain = _Payload((self._carry + self._text[self._frozen :]).strip(), None)
            if self._use_drafts:
                await self._show_draft(plain)
            else:
                await self._put(plain, index)

    async def _show_draft(self, payload: _Payload) -> None:
        if payload.text == self._draft_shown:
            return
        try:
            await self._call(
                SendMessageDraft(
                    chat_id=self._chat_id,
                    draft_id=self._draft_id,
                    text=payload.text,
                    parse_mode=payload.parse_mode,
                    message_thread_id=self._thread_id,
                )
            )
        except TelegramBadRequest as exc:
            if payload.parse_mode is not None and _bad_entities(exc):
                raise
            # Refused in this chat only (TEXTDRAFT_PEER_INVALID...): other chats keep drafts.
            logger.info("no drafts in chat %d (%s); editing a message", self._chat_id, exc)
            self._use_drafts = False
            await self._put(payload, len(self._slots) - 1)
            return
        except TelegramNotFound as exc:
            # A Bot API server without the method: stop asking for every reply.
            logger.info("drafts refused (%s); streaming by message edits instead", exc)
            self._use_drafts = False
            self._drafts.enabled = False
            await self._put(payload, len(self._slots) - 1)
            return
        self._draft_shown = payload.text

    async def _put(self, payload: _Payload, index: int) -> None:
        """Send slot `index` as a new message, or edit it when it exists and changed."""
        slot = self._slots[index]
        wanted = (payload.text, payload.parse_mode)
        if slot.shown == wanted:
            return
        if slot.message_id is None:
            reply = (
                ReplyParameters(message_id=self._reply_to, allow_sending_without_reply=True)
                if self._reply_to is not None and not self._message_ids
                else None
            )
            message = await self._call(
                SendMessage(
                    chat_id=self._chat_id,
                    text=payload.text,
                    parse_mode=payload.parse_mode,
                    message_thread_id=self._thread_id,
                    reply_parameters=reply,
                    link_preview_options=LinkPreviewOptions(is_disabled=True),
                )
            )
            slot.message_id = message.message_id
            self._message_ids.append(message.message_id)
        else:
            try:
                await self._call(
                    EditMessageText(
                        chat_id=self._chat_id,
                        message_id=slot.message_id,
                        text=payload.text,
                        parse_mode=payload.parse_mode,
                        link_preview_options=LinkPreviewOptions(is_disabled=True),
                    )
                )
            except TelegramBadRequest as exc:
                if _message_gone(exc):
                    # Carry on in a new message rather than lose the reply.
                    self._message_ids.remove(slot.message_id)
                    self._slots[index] = _Slot()
                    await self._put(payload, index)
                    return
                if not _not_modified(exc):
                    raise
        slot.shown = wanted

    async def _deliver(self, piece: str, note_html: str, index: int) -> None:
        """Put one finished message in place, whatever it takes within reason."""
        if self._blocked:
            return
        while len(self._slots) <= index:
            self._slots.append(_Slot())
        html = to_html(piece) if piece else ""
        html_payload = _Payload("\n\n".join(p for p in (html, note_html) if p), ParseMode.HTML)
        plain_notes = note_html.replace("<i>", "").replace("</i>", "")
        plain_payload = _Payload("\n\n".join(p for p in (piece, plain_notes) if p), None)
        if self._use_drafts:
            # Drafts are previews only: every finished piece goes as a real message.
            self._slots[index] = _Slot()
        await self._retrying(lambda: self._put_with_fallback(html_payload, plain_payload, index))

    async def _put_with_fallback(self, html: _Payload, plain: _Payload, index: int) -> None:
        try:
            await self._put(html, index)
        except TelegramBadRequest as exc:
            if not _bad_entities(exc):
                raise
            logger.info("Telegram rejected the formatting (%s); sending plain text", exc)
            await self._put(plain, index)

    async def _retrying(self, action: Callable[[], Awaitable[None]]) -> None:
        delay = 1.0
        # A home server's connection can drop for a minute: keep the finished reply until then.
        give_up = time.monotonic() + FINAL_PATIENCE
        flood_refusals = 0
        while flood_refusals < FINAL_ATTEMPTS:
            # The final messages keep the pace too: flood limits count every call in a chat.
            wait = self._next_allowed() - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await action()
                return
            except TelegramRetryAfter:
                flood_refusals += 1  # `_call` noted how long to wait
            except (TelegramNetworkError, TelegramServerError) as exc:
                if time.monotonic() + delay > give_up:
                    raise
                logger.warning("Telegram unavailable (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
        raise TelegramNetworkError(
            method=SendMessage(chat_id=self._chat_id, text="?"),
            message="gave up after repeated 429 responses",
        )


def message_thread(message: Message) -> int | None:
    return message.message_thread_id if message.is_topic_message else None
