"""Rich replies in private chats (Bot API 10.1+): the model's Markdown goes to Telegram as is,
streamed with `sendRichMessageDraft` under Telegram's own Stop button and finished with
`sendRichMessage`.

Fallbacks lose nothing: a Bot API server without the rich methods (404) switches every later
reply to the plain drafts and HTML of `Transport`; a rich message Telegram refuses (400) is
sent again through `Transport`, as HTML and then as plain text, cut to its length limit.
"""

from __future__ import annotations

import logging
from html import escape, unescape

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest, TelegramNotFound
from aiogram.methods import SendRichMessage, SendRichMessageDraft
from aiogram.types import InlineKeyboardMarkup, InputRichMessage

from bot.telegram.delivery import NOTE_ROOM, ChatTarget, DraftSupport, Payload, Transport
from bot.telegram.formatting import MESSAGE_LIMIT, split_message

logger = logging.getLogger(__name__)

RICH_LIMIT = 32768  # characters of text in one rich message (Bot API "rich message limits")
MARKDOWN_SPECIAL = set("\\`*_[]()#+-.!|~>$<{}=")


def markdown_notes(note_html: str) -> str:
    """The notes under a reply (`<i>escaped</i>` paragraphs) as italic Markdown."""
    notes = [unescape(n.removeprefix("<i>").removesuffix("</i>")) for n in note_html.split("\n\n")]
    escaped = ["".join("\\" + c if c in MARKDOWN_SPECIAL else c for c in n) for n in notes if n]
    return "\n\n".join(f"_{note}_" for note in escaped)


def _draft_content(payload: Payload) -> InputRichMessage:
    """The draft's content: the Markdown as written, or, while a reasoning model thinks, its
    thinking in Telegram's collapsed thinking block (an HTML-only tag) above the answer."""
    if not payload.reasoning:
        return InputRichMessage(markdown=payload.source)
    thinking = f"<tg-thinking>{escape(payload.reasoning)}</tg-thinking>"
    return InputRichMessage(html=thinking + payload.text)


class RichTransport(Transport):
    """A `Transport` for one private chat's reply that prefers rich messages."""

    def __init__(self, bot: Bot, target: ChatTarget, drafts: DraftSupport, interval: float) -> None:
        super().__init__(bot, target, drafts, interval)
        self.rich = drafts.rich

    @property
    def limit(self) -> int:
        return RICH_LIMIT if self.rich else MESSAGE_LIMIT

    @property
    def draft_stopped(self) -> bool:
        """The user pressed the Stop button: no more drafts go out for this reply."""
        return self._drafts.stopped(self.target.chat_id, self._draft.draft_id)

    async def show(self, payload: Payload) -> None:
        if not self.rich or payload.source is None:
            await super().show(payload)
            return
        shown = f"{payload.reasoning}\x00{payload.source}"
        if self.draft_stopped or shown == self._draft.shown:
            return
        target = self.target
        try:
            await self._call(
                SendRichMessageDraft(
                    chat_id=target.chat_id,
                    draft_id=self._draft.draft_id,
                    rich_message=_draft_content(payload),
                    message_thread_id=target.thread_id,
                    can_stop=True,
                    # The partial reply stays visible until the final message replaces it.
                    keep_on_stop=True,
                )
            )
        except TelegramNotFound as exc:
            self._no_rich(exc)
            await super().show(payload)
            return
        except TelegramBadRequest as exc:
            # Markdown cut mid-way can be unparsable: this draft goes as HTML instead.
            logger.info("rich draft refused (%s); showing it as HTML", exc)
            if payload.text:
                await super().show(payload)
            return
        self._drafts.running[target.chat_id] = self._draft.draft_id
        self._draft.shown = shown

    async def deliver(
        self,
        piece: str,
        note_html: str,
        index: int,
        markup: InlineKeyboardMarkup | None = None,
    ) -> None:
        """One finished piece; `index` is ignored: every piece opens its own message."""
        if self.blocked:
            return
        if self.rich:
            notes = markdown_notes(note_html) if note_html else ""
            markdown = "\n\n".join(p for p in (piece, notes) if p) or "…"
            try:
                await self._retrying(lambda: self._send_rich(markdown, markup))
                return
            except TelegramNotFound as exc:
                self._no_rich(exc)
            except TelegramBadRequest as exc:
                logger.info("rich message refused (%s); sending it as HTML", exc)
        pieces = split_message(piece, MESSAGE_LIMIT - NOTE_ROOM) if piece else [""]
        for number, part in enumerate(pieces):
            last = number == len(pieces) - 1
            await super().deliver(
                part, note_html if last else "", self.last_slot, markup if last else None
            )
            self.open_slot()

    async def _send_rich(self, markdown: str, markup: InlineKeyboardMarkup | None) -> None:
        message = await self._call(
            SendRichMessage(
                chat_id=self.target.chat_id,
                rich_message=InputRichMessage(markdown=markdown),
                message_thread_id=self.target.thread_id,
                reply_markup=markup,
            )
        )
        self.message_ids.append(message.message_id)

    def _no_rich(self, exc: Exception) -> None:
        # A Bot API server before 10.1: stop asking, for this reply and every later one.
        logger.info("rich messages refused (%s); using drafts and HTML from now on", exc)
        self.rich = False
        self._drafts.rich = False
