"""Rich messages for the fake Bot API server (Bot API 10.1 and 10.3), mixed into FakeTelegram.

Methods: ``sendRichMessageDraft`` (private chats only, ``draft_id`` non-zero, ``can_stop`` shows
Telegram's Stop button, ``keep_on_stop`` keeps the draft visible after it is pressed) and
``sendRichMessage`` (returns a Message whose ``rich_message`` holds the rendered ``blocks``).
``rich_message`` is an InputRichMessage: exactly one of ``html``, ``markdown`` or ``blocks``.
The Markdown is rendered into paragraph and preformatted blocks, enough to tell what the user
sees; the source stays available as ``BotMessage.text`` (``BotMessage.rich`` is True).

Limits: at most RICH_LIMIT (32768) characters of text and RICH_BLOCKS (500) blocks, as in
the Bot API's "rich message limits". Error texts: "Bad Request: rich message is empty",
"Bad Request: RICH_MESSAGE_TOO_LONG", "Bad Request: exactly one of html, markdown or blocks
must be specified", "Bad Request: can't parse rich message: <reason>" (an unclosed ``$$``
formula, or a ``<tg-thinking>`` block outside a draft), drafts outside private chats
"Bad Request: TEXTDRAFT_PEER_INVALID".

Test controls:
    rich_drafts(chat_id) -> list[Event]   every rich draft (kind "rich_draft", .text = source)
    press_stop(chat_id) -- the user presses the Stop button of the newest stoppable draft:
        queues a ``stopped_message_generation`` update {chat, draft_id[, message_thread_id]}
    stopped_drafts -- (chat_id, draft_id, time) of every press
    disable_method("sendRichMessage") etc. -- 404, a Bot API server before 10.1
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fake_telegram import BotMessage, Event

JSON = dict[str, Any]

RICH_LIMIT = 32768
RICH_BLOCKS = 500
FENCE_RE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)\s*$")


def render_markdown(source: str) -> list[JSON]:
    """Telegram's rendering of rich Markdown, reduced to paragraph and code blocks."""
    blocks: list[JSON] = []
    paragraph: list[str] = []
    code: list[str] | None = None
    language = ""

    def close_paragraph() -> None:
        text = "\n".join(paragraph).strip()
        if text:
            blocks.append({"type": "paragraph", "text": text})
        paragraph.clear()

    for line in source.split("\n"):
        fence = FENCE_RE.match(line)
        if code is not None:
            if fence and not fence.group(2):
                block: JSON = {"type": "pre", "text": "\n".join(code)}
                if language:
                    block["language"] = language
                blocks.append(block)
                code = None
            else:
                code.append(line)
        elif fence:
            close_paragraph()
            code, language = [], fence.group(2)
        elif not line.strip():
            close_paragraph()
        else:
            paragraph.append(line)
    if code is not None:  # an unclosed fence runs to the end, as in CommonMark
        blocks.append({"type": "pre", "text": "\n".join(code)})
    close_paragraph()
    return blocks


class RichMethods:
    """The rich methods; relies on FakeTelegram's chats, messages and events."""

    if TYPE_CHECKING:
        _events: list[Event]
        _bot_messages: dict[int, list[BotMessage]]
        _chats: dict[int, JSON]
        bot_user: JSON

        def _chat(self, p: JSON) -> JSON: ...
        def _new_message(self, chat: JSON, sender: JSON, **content: Any) -> JSON: ...
        def push_update(self, update: JSON) -> JSON: ...

    stopped_drafts: list[tuple[int, int, float]]
    _stoppable: dict[int, tuple[int, int | None]]  # chat -> (draft_id, thread) with a Stop

    def _init_rich(self) -> None:
        self.stopped_drafts = []
        self._stoppable = {}

    def rich_drafts(self, chat_id: int) -> list[Event]:
        return [e for e in self._events if e.chat_id == chat_id and e.kind == "rich_draft"]

    def press_stop(self, chat_id: int) -> JSON:
        if chat_id not in self._stoppable:
            raise LookupError(f"no draft with a Stop button in chat {chat_id}")
        draft_id, thread_id = self._stoppable.pop(chat_id)
        self.stopped_drafts.append((chat_id, draft_id, time.monotonic()))
        stopped: JSON = {"chat": self._chats[chat_id], "draft_id": draft_id}
        if thread_id is not None:
            stopped["message_thread_id"] = thread_id
        return self.push_update({"stopped_message_generation": stopped})

    def _m_sendRichMessageDraft(self, p: JSON) -> bool:
        from fake_telegram import Event, bad_request

        chat = self._chat(p)
        if chat["type"] != "private":
            raise bad_request("TEXTDRAFT_PEER_INVALID")
        draft_id = p.get("draft_id")
        if not isinstance(draft_id, int) or draft_id == 0:
            raise bad_request("draft_id must be non-zero")
        source, _ = _rich_source(p, draft=True)
        if p.get("can_stop"):
            self._stoppable[chat["id"]] = (draft_id, p.get("message_thread_id"))
        elif self._stoppable.get(chat["id"], (0, None))[0] == draft_id:
            del self._stoppable[chat["id"]]
        self._events.append(
            Event("rich_draft", chat["id"], time.monotonic(), source, draft_id=draft_id)
        )
        return True

    def _m_sendRichMessage(self, p: JSON) -> JSON:
        from fake_telegram import BotMessage, Event, _check_markup

        chat = self._chat(p)
        source, blocks = _rich_source(p, draft=False)
        markup = _check_markup(p.get("reply_markup"))
        content: JSON = {"rich_message": {"blocks": blocks}}
        if markup and "inline_keyboard" in markup:
            content["reply_markup"] = markup
        message = self._new_message(chat, self.bot_user, **content)
        now = time.monotonic()
        sent = BotMessage(chat["id"], message["message_id"], source, [], markup, now, [source])
        sent.rich = True
        self._bot_messages[chat["id"]].append(sent)
        # Sending a message ends the draft and its Stop button.
        self._stoppable.pop(chat["id"], None)
        self._events.append(Event("send", chat["id"], now, source, message["message_id"]))
        return message


def _rich_source(p: JSON, *, draft: bool) -> tuple[str, list[JSON]]:
    """The InputRichMessage's source text and rendered blocks, checked as Telegram does."""
    from fake_telegram import bad_request

    rich = p.get("rich_message")
    if not isinstance(rich, dict):
        raise bad_request("rich_message is empty")
    given = [key for key in ("html", "markdown", "blocks") if rich.get(key) is not None]
    if len(given) != 1:
        raise bad_request("exactly one of html, markdown or blocks must be specified")
    if given[0] == "blocks":
        blocks = list(rich["blocks"])
        source = "\n\n".join(str(b.get("text", "")) for b in blocks)
    else:
        source = str(rich[given[0]])
        if source.count("$$") % 2:
            raise bad_request("can't parse rich message: unclosed formula")
        if "<tg-thinking>" in source and not draft:
            raise bad_request("can't parse rich message: thinking blocks are allowed in drafts")
        blocks = render_markdown(source)
    if not source.strip() or not blocks:
        raise bad_request("rich message is empty")
    if len(source) > RICH_LIMIT:
        raise bad_request("RICH_MESSAGE_TOO_LONG")
    if len(blocks) > RICH_BLOCKS:
        raise bad_request("RICH_MESSAGE_TOO_LONG")
    return source.strip(), blocks
