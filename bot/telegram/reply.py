"""Show a reply in Telegram while the model writes it.

Private chats get Telegram's native drafts (`sendMessageDraft`) and one real `sendMessage` at
the end. Where drafts are refused (groups, a Bot API server without them) one message is sent
and then edited, at most once per `interval`. Nothing unchanged is ever sent again, a 429 is
waited out before the newest text goes, and the final text is always delivered, split into
several messages past Telegram's length limit.

The handler owns a reply: `async with TelegramReply(...) as reply:` stops its background work
on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from html import escape
from types import TracebackType

from aiogram import Bot
from aiogram.enums import ParseMode
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import InlineKeyboardMarkup, Message

from bot.core.reasoning import split_reasoning
from bot.telegram.delivery import (
    NOTE_ROOM,
    ChatTarget,
    DraftSupport,
    Payload,
    Transport,
    bad_entities,
)
from bot.telegram.formatting import next_piece, split_message, to_html, utf16_len
from bot.telegram.rich_delivery import RichTransport
from bot.telegram.texts import Texts

logger = logging.getLogger(__name__)


class Deferred(Exception):
    """An intermediate update could not go now; it will be retried with newer text."""


@dataclass
class _View:
    """The newest full text, or a status line shown before the reply starts."""

    text: str = ""
    is_status: bool = False
    reasoning: str = ""  # a reasoning model's thinking, shown only in rich drafts
    started: asyncio.Event = field(default_factory=asyncio.Event)  # the first words came


@dataclass
class _Pages:
    """How the text is cut into finished Telegram messages."""

    frozen: int = 0  # characters of the text already closed into finished messages
    carry: str = ""  # a code fence reopened at the start of the next message


class TelegramReply:
    def __init__(
        self,
        bot: Bot,
        target: ChatTarget,
        *,
        drafts: DraftSupport,
        interval: float,
        texts: Texts,
    ) -> None:
        rich = target.private and drafts.enabled and drafts.rich
        kind = RichTransport if rich else Transport
        self._transport = kind(bot, target, drafts, interval)
        self._texts = texts
        self._view = _View()
        self._pages = _Pages()
        self._dirty = asyncio.Event()
        self._finishing = asyncio.Event()
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"reply-{target.chat_id}")

    async def __aenter__(self) -> TelegramReply:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def started(self) -> asyncio.Event:
        """Set once the first words are shown: the typing indicator may stop."""
        return self._view.started

    @property
    def message_ids(self) -> list[int]:
        """The Telegram messages that carry the reply so far."""
        return list(self._transport.message_ids)

    # The interface the chat service drives (bot.core.turn.ReplySink).

    async def show_queue(self, ahead: int) -> None:
        await self._show_status(self._texts.queue_position.format(ahead=ahead))

    async def show_your_turn(self) -> None:
        await self._show_status(self._texts.queue_your_turn)

    async def show_engine_wait(self) -> None:
        await self._show_status(self._texts.engine_wait)

    async def update(self, text: str) -> None:
        reasoning, answer = split_reasoning(text)
        transport = self._transport
        if not (isinstance(transport, RichTransport) and transport.rich):
            reasoning = ""  # only a rich draft has a thinking block; elsewhere it is dropped
        if not answer.strip() and not reasoning:
            return
        self._view.text, self._view.is_status, self._view.reasoning = answer, False, reasoning
        self._view.started.set()
        self._dirty.set()

    # What the handler does with the outcome.

    async def finish(
        self, text: str, notes: list[str], markup: InlineKeyboardMarkup | None = None
    ) -> list[int]:
        """Deliver the whole text, `markup` under its last message; returns the ids of every
        message that carries it."""
        self._view.started.set()
        self._finishing.set()
        self._dirty.set()
        await self._flusher
        transport = self._transport
        if transport.blocked:
            return []
        self._view.text, self._view.is_status = text, False
        rest = text[self._pages.frozen :]
        body = (self._pages.carry + rest).strip() if rest.strip() else ""
        note_html = "\n\n".join(f"<i>{escape(note)}</i>" for note in notes)
        pieces = split_message(body, transport.limit - NOTE_ROOM) if body else []
        if not pieces and not note_html:
            note_html = "…"
        if not pieces:
            pieces = [""]
        base = transport.last_slot
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            await transport.deliver(
                piece, note_html if last else "", base + index, markup if last else None
            )
        return transport.message_ids

    async def close(self) -> None:
        """Stop the background work without delivering anything more."""
        self._view.started.set()
        self._flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._flusher
        self._transport.release()

    # Background work.

    async def _show_status(self, text: str) -> None:
        """A line shown before the reply starts, such as the place in the queue."""
        if self._view.started.is_set():
            return
        self._view.text, self._view.is_status = text, True
        self._dirty.set()

    async def _flush_loop(self) -> None:
        transport = self._transport
        while True:
            await self._dirty.wait()
            if self._finishing.is_set():
                return
            delay = transport.next_allowed() - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._finishing.wait(), delay)
                if self._finishing.is_set():
                    return
            self._dirty.clear()
            try:
                await self._flush(self._view.text, self._view.is_status)
            except Deferred as deferred:
                logger.debug("update deferred: %s", deferred)
                self._dirty.set()
            except TelegramForbiddenError as exc:
                logger.info("chat %d cannot be written to (%s)", transport.target.chat_id, exc)
                transport.blocked = True
                return
            except TelegramAPIError as exc:
                # A lost intermediate update is harmless: the final text follows anyway.
                logger.warning("intermediate update failed: %s", exc)
                transport.hold_back()

    async def _flush(self, text: str, is_status: bool) -> None:
        transport, pages = self._transport, self._pages
        if is_status:
            await self._show(Payload(escape(text), ParseMode.HTML, source=text))
            return
        body = pages.carry + text[pages.frozen :]
        # Text past the limit closes the current message for good and opens the next one.
        limit = transport.limit - NOTE_ROOM
        while utf16_len(body.strip()) > limit:
            piece, used, carry = next_piece(body, limit)
            await transport.deliver(piece, "", transport.last_slot)
            transport.open_slot()
            pages.frozen += used - len(pages.carry)
            pages.carry = carry
            body = pages.carry + text[pages.frozen :]
        reasoning = self._view.reasoning
        if body.strip() or reasoning:
            html = to_html(body.strip())
            await self._show(Payload(html, ParseMode.HTML, body.strip(), reasoning=reasoning))

    async def _show(self, payload: Payload) -> None:
        """An intermediate view: a draft, or a sent then edited message."""
        transport = self._transport
        try:
            await transport.show(payload)
        except TelegramRetryAfter as exc:
            raise Deferred("retry after") from exc
        except (TelegramNetworkError, TelegramServerError) as exc:
            transport.hold_back()
            raise Deferred(str(exc)) from exc
        except TelegramBadRequest as exc:
            if payload.parse_mode is None or not bad_entities(exc):
                raise
            # A half-written reply can hold markup Telegram rejects: show it as plain text.
            pages = self._pages
            await transport.show(Payload((pages.carry + self._view.text[pages.frozen :]).strip()))


def target_of(message: Message, *, private: bool) -> ChatTarget:
    """Where to answer `message`: in groups as a reply to it, in its forum topic."""
    return ChatTarget(
        chat_id=message.chat.id,
        private=private,
        reply_to=None if private else message.message_id,
        thread_id=message.message_thread_id if message.is_topic_message else None,
    )
