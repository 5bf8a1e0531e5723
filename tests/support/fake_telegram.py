"""A local fake Telegram Bot API server for end-to-end tests of the real, unmodified bot.

It speaks Telegram's wire protocol (``POST {base_url}/bot{token}/{method}``, form-encoded,
multipart, JSON or query parameters; answers ``{"ok": true, "result": ...}`` or
``{"ok": false, "error_code": N, "description": "..."}``) with Telegram's method names, JSON
shapes, limits and error texts, so aiogram raises exactly what it would raise in production
(``TelegramBadRequest``, ``TelegramRetryAfter``, ``TelegramServerError``, ``TelegramNotFound``).

Point the bot at it with ``TELEGRAM_API_URL=server.base_url`` and the token ``server.token``
(or ``AiohttpSession(api=server.api_server())``)::

    async with FakeTelegram() as tg:                  # 127.0.0.1, a free port
        ...start the bot with tg.base_url / tg.token...
        tg.push_message(42, "/start")                  # a user writes; returns the Update
        await tg.wait_for(lambda: tg.texts(42))        # until the bot has answered
        assert "Привет" in tg.texts(42)[-1]

Methods: getMe, getUpdates (long polling: offset confirms, limit, timeout, allowed_updates;
a second poller ends the first with 409), setWebhook, deleteWebhook, getWebhookInfo and
webhook delivery (fake_telegram_webhook.py: secret header, retries, per-chat order, a load
balancer over several backends, duplicate deliveries), sendMessage,
sendMessageDraft, sendRichMessage, sendRichMessageDraft (fake_telegram_rich.py: rich
messages, the Stop button, press_stop), editMessageText, editMessageReplyMarkup,
deleteMessage, sendChatAction, answerCallbackQuery, setMyCommands / getMyCommands /
deleteMyCommands. Any other method, like on Telegram, is 404 ``Not Found``; so is a method
switched off with ``disable_method``.
Text is 1..4096 code points after entity parsing, whitespace-trimmed; parse_mode=HTML is parsed
with Telegram's tag set and error texts (Markdown modes are accepted as plain text).

Error texts (as Telegram words them): sendMessage "Bad Request: message text is empty",
"Bad Request: message is too long", "Bad Request: chat not found", "Bad Request: can't parse
entities: <reason>", 403 "Forbidden: bot was blocked by the user"; editMessageText NOT_MODIFIED
(below), "Bad Request: message to edit not found", "Bad Request: MESSAGE_TOO_LONG", "Bad Request:
message can't be edited"; sendMessageDraft outside private chats "Bad Request:
TEXTDRAFT_PEER_INVALID"; 429 "Too Many Requests: retry after N" with parameters.retry_after.

``from fake_telegram import FakeTelegram`` (tests/ is on sys.path). ``FakeTelegram(token=...,
bot_username="domovoy_test_bot", privacy_mode=False, local_bot_api=False)``; ``await start()``
returns and sets ``base_url``, ``await stop()``, or ``async with``; ``bot_user`` is what getMe
describes.

Test controls (synchronous unless marked async):

Users and updates (each returns the Update dict it queued; chats become known this way):
    push_message(user_id, text, *, chat_id=None, chat_type="private", username=None,
        first_name=None, language_code="ru", reply_to_message_id=None, entities=None)
        -- entities default to Telegram's own detection of /commands and @mentions
    push_group_message(user_id, chat_id, text, *, mention=False, reply_to_message_id=None)
    push_photo / push_voice / push_sticker / push_document(user_id, *, chat_id=None, ...)
    push_edited_message(chat_id, message_id, text)
    press_button(chat_id, message_id, *, text=None, data=None, user_id=None)
        -- callback_query from an inline button of a message the bot sent
    push_burst(user_ids, per_user, *, text="{user}: message {n}", chat_id=None, first=0)
        -- a flood: per_user numbered messages from each user, interleaved; in a group
        (chat_id) each mentions the bot
    push_update(update)  -- anything else, raw; update_id is assigned
    block(user_id) -- the user blocked the bot: sends give 403 Forbidden

What the bot did (timestamps are time.monotonic()):
    sent_messages(chat_id) -> list[BotMessage]   every message sent, in order, with .text
        (current), .history (texts after each edit), .reply_markup, .deleted, .sent_at
    texts(chat_id) -> list[str]                  current texts of visible bot messages
    transcript(chat_id) -> list[Event]           send/edit/draft/delete/action events in order
    edits(chat_id, message_id=None), drafts(chat_id) -> list[Event]
    calls(method=None) -> list[Call]             every request: .method, .params (parsed:
        ints, bools, JSON objects), .status, .response, .at
    my_commands(scope=None, language_code="") -> list of {"command", "description"}
    dropped_updates                              updates excluded by allowed_updates

Failures:
    fail_next(method, *, status=429, retry_after=2, count=1, description=None, html=False)
        -- the next `count` calls of method ("*" = any) fail; 429 carries
        parameters.retry_after, 5xx answer JSON with the HTTP phrase ("Bad Gateway" for 502, as
        Telegram does; html=True: the front end's nginx page, which aiogram cannot decode)
    outage(seconds, *, status=502, html=False, start_in=0.0) / end_outage() -- every
        request fails, waiting long polls too; start_in schedules the window for later;
        `outages` lists each window as (start, end)
    fail_every(method, every, *, status=429, retry_after=1) / stop_failing(method) -- every
        every-th call of method ("*": any but getUpdates) fails, for long runs
    set_flood_limit(per_second, *, retry_after=1, methods=(sends, edits, drafts),
        group_per_minute=None, minute=60.0) -- more than per_second calls per chat within a
        second, or (groups: negative chat ids) more than group_per_minute within `minute`
        seconds, gives 429 until retry_after has passed; each refusal is appended to
        flood_refusals as (chat_id, method, time)
    disable_method(name) / enable_method(name) -- e.g. a Bot API server without drafts

    async wait_for(predicate, timeout=10.0) -- awaits predicate() truthy, returns its value,
        raises AssertionError with the recent calls on timeout

The server runs on the test's event loop: while a bot in another process talks to it, keep the
loop running (await wait_for, asyncio.sleep or an asyncio subprocess, never a blocking wait).
A pytest fixture is three lines::

    @pytest.fixture
    async def tg() -> AsyncIterator[FakeTelegram]:
        async with FakeTelegram() as server:
            yield server
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import math
import re
import time
import urllib.parse
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http import HTTPStatus
from types import TracebackType
from typing import Any, TypeVar

from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import Update
from aiohttp import web
from fake_telegram_rich import RichMethods
from fake_telegram_webhook import WebhookMethods

JSON = dict[str, Any]
T = TypeVar("T")

MAX_TEXT = 4096
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are"
    " exactly the same as a current content and reply markup of the message"
)
# Every update type aiogram knows, from its own Update model.
ALL_UPDATES = frozenset(Update.model_fields) - {"update_id"}
DEFAULT_UPDATES = ALL_UPDATES - {"chat_member", "message_reaction", "message_reaction_count"}
# fmt: off
CHAT_ACTIONS = frozenset((
    "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
    "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note",
))
# How the form-encoded strings aiogram sends are typed back (everything else stays a string).
INT_FIELDS = frozenset((
    "chat_id", "message_id", "draft_id", "message_thread_id", "offset", "limit", "timeout",
    "cache_time", "reply_to_message_id", "user_id", "max_connections",
))
BOOL_FIELDS = frozenset((
    "show_alert", "drop_pending_updates", "disable_notification", "protect_content", "can_stop",
    "keep_on_stop", "allow_sending_without_reply",
))
JSON_FIELDS = frozenset((
    "reply_markup", "entities", "allowed_updates", "commands", "scope", "reply_parameters",
    "link_preview_options", "caption_entities", "rich_message",
))
HTML_TAGS = {
    "b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline",
    "ins": "underline", "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough",
    "span": "spoiler", "tg-spoiler": "spoiler", "a": "text_link", "code": "code", "pre": "pre",
    "blockquote": "blockquote", "tg-emoji": "custom_emoji",
}
# fmt: on
COMMAND_RE = re.compile(r"(?<!\S)/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")
MENTION_RE = re.compile(r"(?<![\w@])@[A-Za-z0-9_]{5,32}")
BOT_COMMAND_RE = re.compile(r"[a-z0-9_]{1,32}")


class ApiError(Exception):
    """A Telegram error answer: HTTP status, description and optional retry_after."""

    def __init__(
        self, status: int, description: str, retry_after: int | None = None, html: bool = False
    ) -> None:
        super().__init__(description)
        self.status, self.description, self.retry_after = status, description, retry_after
        self.html = html  # answer with the front end's HTML page instead of JSON


def bad_request(what: str) -> ApiError:
    return ApiError(400, f"Bad Request: {what}")


@dataclass
class Call:
    method: str
    params: JSON
    at: float
    status: int = 200
    response: JSON = field(default_factory=dict)


@dataclass
class Event:
    """One thing the bot did in a chat: kind is send, edit, draft, delete or action."""

    kind: str
    chat_id: int
    at: float
    text: str | None = None
    message_id: int | None = None
    draft_id: int | None = None
    action: str | None = None


@dataclass
class BotMessage:
    chat_id: int
    message_id: int
    text: str
    entities: list[JSON]
    reply_markup: JSON | None
    sent_at: float
    history: list[str] = field(default_factory=list)
    deleted: bool = False
    rich: bool = False  # sent with sendRichMessage: text is the rich message's source


@dataclass(frozen=True)
class _Flood:
    per_second: int | None
    retry_after: int
    methods: frozenset[str]
    group_per_minute: int | None
    minute: float


@dataclass
class _Failure:
    status: int
    retry_after: int | None
    description: str | None
    html: bool


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


class _TelegramHTML(HTMLParser):
    """Telegram's HTML subset to (text, entities); raises ApiError with Telegram's texts."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=False)
        self.source = source
        self.parts: list[str] = []
        self.entities: list[JSON] = []
        self.stack: list[tuple[str, int, JSON | None]] = []
        self.size = 0  # UTF-16 length of the text so far: entity offsets count in UTF-16
        starts = [0]
        for line in source.splitlines(keepends=True):
            starts.append(starts[-1] + len(line))
        self.line_starts = starts

    def parse(self) -> tuple[str, list[JSON]]:
        self.feed(self.source)
        self.close()
        if self.stack:
            self._fail(f'Can\'t find end tag corresponding to start tag "{self.stack[-1][0]}"')
        return "".join(self.parts), sorted(self.entities, key=lambda e: e["offset"])

    def _fail(self, reason: str) -> None:
        raise bad_request(f"can't parse entities: {reason}")

    def _at(self) -> int:
        line, column = self.getpos()
        return len(self.source[: self.line_starts[line - 1] + column].encode())

    def _text(self, text: str) -> None:
        self.parts.append(text)
        self.size += utf16_len(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag not in HTML_TAGS or (tag == "span" and values.get("class") != "tg-spoiler"):
            self._fail(f'Unsupported start tag "{tag}" at byte offset {self._at()}')
        entity: JSON | None = {"type": HTML_TAGS[tag]}
        if tag == "a":
            entity = {"type": "text_link", "url": values["href"]} if values.get("href") else None
        elif tag == "blockquote" and "expandable" in values:
            entity = {"type": "expandable_blockquote"}
        elif tag == "tg-emoji":
            entity = {"type": "custom_emoji", "custom_emoji_id": values.get("emoji-id") or ""}
        elif tag == "code" and self.stack and self.stack[-1][0] == "pre":
            language = (values.get("class") or "").removeprefix("language-")
            pre = self.stack[-1][2]
            if language and pre is not None:
                pre["language"] = language
            entity = None  # <pre><code> is one pre entity
        self.stack.append((tag, self.size, entity))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack:
            self._fail(f"Unexpected end tag at byte offset {self._at()}")
        open_tag, start, entity = self.stack[-1]
        if open_tag != tag:
            self._fail(
                f'Unmatched end tag at byte offset {self._at()}, expected "</{open_tag}>",'
                f' found "</{tag}>"'
            )
        self.stack.pop()
        if entity is not None and self.size > start:
            self.entities.append({**entity, "offset": start, "length": self.size - start})

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        if "<" in data:  # a bare "<" that is no tag: Telegram reads an empty tag name
            self._fail(f'Unsupported start tag "" at byte offset {self._at()}')
        self._text(data)

    def handle_entityref(self, name: str) -> None:
        named = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
        self._text(named.get(name, f"&{name};"))

    def handle_charref(self, name: str) -> None:
        try:
            self._text(chr(int(name[1:], 16) if name[:1] in "xX" else int(name)))
        except (ValueError, OverflowError):
            self._text(f"&#{name};")

    def handle_comment(self, data: str) -> None:
        self._fail(f'Unsupported start tag "!--" at byte offset {self._at()}')

    def handle_decl(self, decl: str) -> None:
        self._fail(f'Unsupported start tag "!" at byte offset {self._at()}')

    def handle_pi(self, data: str) -> None:
        self._fail(f'Unsupported start tag "?" at byte offset {self._at()}')

    def unknown_decl(self, data: str) -> None:
        self.handle_decl(data)


def parse_text(
    text: str, parse_mode: str | None, entities: list[JSON] | None
) -> tuple[str, list[JSON]]:
    """Apply parse_mode or explicit entities, then trim whitespace as Telegram does."""
    if entities is not None or not parse_mode:
        plain, found = text, list(entities or [])
    elif parse_mode.lower() == "html":
        plain, found = _TelegramHTML(text).parse()
    elif parse_mode.lower() in ("markdown", "markdownv2"):
        plain, found = text, []  # accepted unparsed: the bot under test sends HTML
    else:
        raise bad_request("unsupported parse_mode")
    stripped = plain.strip()
    shift = utf16_len(plain[: len(plain) - len(plain.lstrip())])
    limit = utf16_len(stripped)
    kept = []
    for entity in found:
        start = max(0, entity["offset"] - shift)
        end = min(limit, entity["offset"] - shift + entity["length"])
        if end > start:
            kept.append({**entity, "offset": start, "length": end - start})
    return stripped, kept


def detect_entities(text: str) -> list[JSON]:
    """The bot_command and mention entities Telegram adds to a user's text."""
    found = [("bot_command", m) for m in COMMAND_RE.finditer(text)]
    found += [("mention", m) for m in MENTION_RE.finditer(text)]
    return sorted(
        (
            {"type": kind, "offset": utf16_len(text[: m.start()]), "length": utf16_len(m[0])}
            for kind, m in found
        ),
        key=lambda e: e["offset"],
    )


class FakeTelegram(RichMethods, WebhookMethods):
    """The fake Bot API server and its test controls (see the module docstring)."""

    def __init__(
        self,
        token: str = "123456789:AAE-fake-token-for-domovoy-tests-01",
        *,
        bot_username: str = "domovoy_test_bot",
        bot_name: str = "Домовой",
        privacy_mode: bool = False,
        local_bot_api: bool = False,
    ) -> None:
        self.token = token
        self.bot_user: JSON = {
            "id": int(token.split(":")[0]),
            "is_bot": True,
            "first_name": bot_name,
            "username": bot_username,
        }
        self.privacy_mode = privacy_mode
        self.base_url = ""
        self.dropped_updates: list[JSON] = []
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self._closing = False
        self._chats: dict[int, JSON] = {}
        self._users: dict[int, JSON] = {}
        self._blocked: set[int] = set()
        self._messages: dict[tuple[int, int], JSON] = {}
        self._bot_messages: dict[int, list[BotMessage]] = defaultdict(list)
        self._message_ids: dict[int, itertools.count[int]] = defaultdict(lambda: itertools.count(1))
        self._updates: list[JSON] = []
        self._update_ids = itertools.count(700_000_001)
        self._allowed_updates = DEFAULT_UPDATES
        self._poller = 0
        self._callbacks: dict[str, bool] = {}  # callback query id -> answered
        self._callback_ids = itertools.count(4_242_000_000_001)
        self._events: list[Event] = []
        self._calls: list[Call] = []
        self._commands: dict[tuple[str, str], list[JSON]] = {}
        self._failures: dict[str, deque[_Failure]] = defaultdict(deque)
        self._outage_from = 0.0
        self._outage_until = 0.0
        self.outages: list[tuple[float, float]] = []  # (start, end) of each outage, monotonic
        self._periodic: dict[str, tuple[int, _Failure, itertools.count[int]]] = {}
        self._outage_status = 502
        self._outage_html = False
        self._disabled: set[str] = set()
        self._flood: _Flood | None = None
        self.flood_refusals: list[tuple[int, str, float]] = []  # (chat_id, method, when)
        self._flood_times: dict[int, deque[float]] = defaultdict(deque)
        self._flood_until: dict[int, float] = {}
        self._init_rich()
        self._init_webhook(local_bot_api)
        # Telegram's method names are case-insensitive; each one is a `_m_<name>` method below.
        self._handlers: dict[str, Callable[[JSON], Any]] = {
            name[3:].lower(): getattr(self, name) for name in dir(self) if name.startswith("_m_")
        }

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        # Cancel handlers whose client went away, so a stopped bot's long poll ends at once.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        self._closing = True
        self._notify()
        await self._stop_webhook()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def api_server(self) -> TelegramAPIServer:
        return TelegramAPIServer.from_base(self.base_url)

    # ---- pushing updates -------------------------------------------------------------------

    def push_update(self, update: JSON) -> JSON:
        update = {"update_id": next(self._update_ids), **update}
        kind = next(key for key in update if key != "update_id")
        (self._updates if kind in self._allowed_updates else self.dropped_updates).append(update)
        self._notify()
        return update

    def push_message(
        self,
        user_id: int,
        text: str,
        *,
        chat_id: int | None = None,
        chat_type: str = "private",
        username: str | None = None,
        first_name: str | None = None,
        language_code: str | None = "ru",
        reply_to_message_id: int | None = None,
        entities: list[JSON] | None = None,
    ) -> JSON:
        found = detect_entities(text) if entities is None else entities
        content: JSON = {"text": text, **({"entities": found} if found else {})}
        return self._push_user_message(
            user_id,
            content,
            chat_id=chat_id,
            chat_type=chat_type,
            username=username,
            first_name=first_name,
            language_code=language_code,
            reply_to_message_id=reply_to_message_id,
        )

    def push_group_message(
        self,
        user_id: int,
        chat_id: int,
        text: str,
        *,
        mention: bool = False,
        reply_to_message_id: int | None = None,
        chat_type: str = "supergroup",
        **user: Any,
    ) -> JSON:
        if mention:
            text = f"@{self.bot_user['username']} {text}"
        return self.push_message(
            user_id,
            text,
            chat_id=chat_id,
            chat_type=chat_type,
            reply_to_message_id=reply_to_message_id,
            **user,
        )

    def push_burst(
        self,
        user_ids: Iterable[int],
        per_user: int,
        *,
        text: str = "{user}: message {n}",
        chat_id: int | None = None,
        first: int = 0,
    ) -> list[JSON]:
        """`per_user` messages from each user, interleaved (user A's 0, user B's 0, A's 1, ...)
        as a flood arrives; texts are `text.format(user=..., n=...)` with n counting from
        `first`. In a group (`chat_id`), each mentions the bot. Returns the updates in order."""
        users = list(user_ids)
        updates = []
        for n in range(first, first + per_user):
            for user in users:
                body = text.format(user=user, n=n)
                if chat_id is None:
                    updates.append(self.push_message(user, body))
                else:
                    updates.append(self.push_group_message(user, chat_id, body, mention=True))
        return updates

    def push_photo(self, user_id: int, *, caption: str | None = None, **kw: Any) -> JSON:
        sizes = [self._file(w, width=w, height=w * 3 // 4, file_size=w * 60) for w in (90, 800)]
        return self._push_user_message(user_id, {"photo": sizes, **_caption(caption)}, **kw)

    def push_voice(self, user_id: int, *, duration: int = 3, **kw: Any) -> JSON:
        voice = self._file(1, duration=duration, mime_type="audio/ogg", file_size=duration * 4000)
        return self._push_user_message(user_id, {"voice": voice}, **kw)

    def push_sticker(self, user_id: int, *, emoji: str = "👍", **kw: Any) -> JSON:
        sticker = self._file(
            2,
            type="regular",
            width=512,
            height=512,
            is_animated=False,
            is_video=False,
            emoji=emoji,
            set_name="TestStickers",
            file_size=20_000,
        )
        return self._push_user_message(user_id, {"sticker": sticker}, **kw)

    def push_document(
        self, user_id: int, *, file_name: str = "notes.pdf", caption: str | None = None, **kw: Any
    ) -> JSON:
        document = self._file(3, file_name=file_name, mime_type="application/pdf", file_size=1234)
        return self._push_user_message(user_id, {"document": document, **_caption(caption)}, **kw)

    def push_edited_message(self, chat_id: int, message_id: int, text: str) -> JSON:
        message = self._messages.get((chat_id, message_id))
        if message is None or message["from"].get("is_bot"):
            raise LookupError(f"no user message {message_id} in chat {chat_id}")
        message.update(text=text, edit_date=int(time.time()), entities=detect_entities(text))
        if not message["entities"]:
            del message["entities"]
        return self.push_update({"edited_message": copy.deepcopy(message)})

    def press_button(
        self,
        chat_id: int,
        message_id: int,
        *,
        text: str | None = None,
        data: str | None = None,
        user_id: int | None = None,
    ) -> JSON:
        message = self._messages.get((chat_id, message_id))
        rows = ((message or {}).get("reply_markup") or {}).get("inline_keyboard", [])
        buttons = [b for row in rows for b in row if text in (None, b["text"])]
        buttons = [b for b in buttons if data in (None, b.get("callback_data"))]
        if message is None or not buttons or "callback_data" not in buttons[0]:
            raise LookupError(f"no such callback button on message {message_id} in {chat_id}")
        if user_id is None and self._chats[chat_id]["type"] != "private":
            raise ValueError("pressing a button in a group needs a user_id")
        user = self._users[user_id if user_id is not None else chat_id]
        query_id = str(next(self._callback_ids))
        self._callbacks[query_id] = False
        return self.push_update(
            {
                "callback_query": {
                    "id": query_id,
                    "from": user,
                    "message": copy.deepcopy(message),
                    "chat_instance": str(-abs(chat_id) * 7919),
                    "data": buttons[0]["callback_data"],
                }
            }
        )

    def block(self, user_id: int) -> None:
        self._blocked.add(user_id)

    # ---- what the bot did ------------------------------------------------------------------

    def sent_messages(self, chat_id: int) -> list[BotMessage]:
        return list(self._bot_messages.get(chat_id, []))

    def texts(self, chat_id: int) -> list[str]:
        return [m.text for m in self._bot_messages.get(chat_id, []) if not m.deleted]

    def transcript(self, chat_id: int) -> list[Event]:
        return [e for e in self._events if e.chat_id == chat_id]

    def edits(self, chat_id: int, message_id: int | None = None) -> list[Event]:
        return [
            e
            for e in self.transcript(chat_id)
            if e.kind == "edit" and message_id in (None, e.message_id)
        ]

    def drafts(self, chat_id: int) -> list[Event]:
        return [e for e in self.transcript(chat_id) if e.kind == "draft"]

    def calls(self, method: str | None = None) -> list[Call]:
        return [c for c in self._calls if method is None or c.method.lower() == method.lower()]

    def my_commands(self, scope: JSON | None = None, language_code: str = "") -> list[JSON]:
        return list(self._commands.get((_scope_key(scope), language_code), []))

    # ---- failures --------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        *,
        status: int = 429,
        retry_after: int = 2,
        count: int = 1,
        description: str | None = None,
        html: bool = False,
    ) -> None:
        failure = _Failure(status, retry_after if status == 429 else None, description, html)
        self._failures[method.lower()].extend([failure] * count)

    def outage(
        self, seconds: float, *, status: int = 502, html: bool = False, start_in: float = 0.0
    ) -> None:
        start = time.monotonic() + start_in
        self._outage_from, self._outage_until = start, start + seconds
        self._outage_status, self._outage_html = status, html
        self.outages.append((start, start + seconds))
        if start_in > 0:
            asyncio.get_running_loop().call_later(start_in, self._notify)
        self._notify()  # waiting long polls fail too, as their connections would

    def end_outage(self) -> None:
        self._outage_until = 0.0
        if self.outages:
            self.outages[-1] = (self.outages[-1][0], time.monotonic())

    def fail_every(
        self,
        method: str,
        every: int,
        *,
        status: int = 429,
        retry_after: int = 1,
        description: str | None = None,
    ) -> None:
        """Every `every`-th call of `method` ("*" = any but getUpdates) fails, until
        stop_failing(method): steady fault injection for long runs."""
        if every < 1:
            raise ValueError("every must be at least 1")
        failure = _Failure(status, retry_after if status == 429 else None, description, False)
        self._periodic[method.lower()] = (every, failure, itertools.count(1))

    def stop_failing(self, method: str) -> None:
        self._periodic.pop(method.lower(), None)

    def set_flood_limit(
        self,
        per_second: int | None,
        *,
        retry_after: int = 1,
        methods: Iterable[str] = (
            "sendMessage",
            "editMessageText",
            "sendMessageDraft",
            "sendRichMessage",
            "sendRichMessageDraft",
        ),
        group_per_minute: int | None = None,
        minute: float = 60.0,
    ) -> None:
        names = frozenset(m.lower() for m in methods)
        if per_second is None and group_per_minute is None:
            self._flood = None
            return
        self._flood = _Flood(per_second, retry_after, names, group_per_minute, minute)

    def disable_method(self, name: str) -> None:
        self._disabled.add(name.lower())

    def enable_method(self, name: str) -> None:
        self._disabled.discard(name.lower())

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0) -> T:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                recent = [(c.method, c.status, c.params) for c in self._calls[-8:]]
                raise AssertionError(f"condition not met in {timeout}s; last calls: {recent}")
            # Re-check at least every 0.1 s: predicates may look at things besides this server.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))
        return result

    # ---- HTTP ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        handler = self._handlers.get(method.lower())
        call = Call(handler.__name__[3:] if handler else method, {}, time.monotonic())
        self._calls.append(call)
        try:
            if request.match_info["token"] != self.token:
                raise ApiError(401, "Unauthorized")
            if handler is None or method.lower() in self._disabled:
                raise ApiError(404, "Not Found")
            call.params = params = await _read_params(request)
            if _has_lone_surrogate(params):
                raise bad_request("strings must be encoded in UTF-8")
            self._check_failures(call.method.lower(), params)
            result = handler(params)
            if asyncio.iscoroutine(result):
                result = await result
        except asyncio.CancelledError:  # the client hung up, e.g. a stopped bot's long poll
            call.status = 499
            raise
        except ApiError as exc:
            call.status, call.response = exc.status, _error_body(exc)
            self._notify()
            return _html_error(exc.status) if exc.html else _error(exc)
        call.response = {"ok": True, "result": result}
        self._notify()
        return web.json_response(call.response)

    def _check_failures(self, method: str, params: JSON) -> None:
        self._check_outage()
        for key in (method, "*"):
            periodic = self._periodic.get(key)
            if periodic is not None and not (key == "*" and method == "getupdates"):
                every, failure, counter = periodic
                if next(counter) % every == 0:
                    default = _default_description(failure.status, failure.retry_after)
                    description = failure.description or default
                    raise ApiError(failure.status, description, failure.retry_after)
            if self._failures[key]:
                failure = self._failures[key].popleft()
                default = _default_description(failure.status, failure.retry_after)
                description = failure.description or default
                raise ApiError(failure.status, description, failure.retry_after, failure.html)
        flood = self._flood
        if flood is None or method not in flood.methods:
            return
        chat_id, now = params.get("chat_id"), time.monotonic()
        if not isinstance(chat_id, int):
            return
        if now < self._flood_until.get(chat_id, 0.0):
            wait = math.ceil(self._flood_until[chat_id] - now)
            raise ApiError(429, f"Too Many Requests: retry after {wait}", wait)
        times = self._flood_times[chat_id]
        window = flood.minute if chat_id < 0 and flood.group_per_minute else 1.0
        while times and times[0] <= now - window:
            times.popleft()
        last_second = sum(1 for t in times if t > now - 1.0)
        too_many = flood.per_second is not None and last_second >= flood.per_second
        if chat_id < 0 and flood.group_per_minute is not None:
            too_many = too_many or len(times) >= flood.group_per_minute
        if too_many:
            self._flood_until[chat_id] = now + flood.retry_after
            self.flood_refusals.append((chat_id, method, now))
            raise ApiError(
                429, f"Too Many Requests: retry after {flood.retry_after}", flood.retry_after
            )
        times.append(now)

    def _check_outage(self) -> None:
        if self._outage_from <= time.monotonic() < self._outage_until:
            status = self._outage_status
            raise ApiError(status, HTTPStatus(status).phrase, html=self._outage_html)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ---- methods ---------------------------------------------------------------------------

    def _m_getMe(self, p: JSON) -> JSON:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": not self.privacy_mode,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _m_getUpdates(self, p: JSON) -> list[JSON]:
        self._refuse_polling()
        offset, limit = p.get("offset"), min(max(int(p.get("limit") or 100), 1), 100)
        if "allowed_updates" in p:
            self._allowed_updates = frozenset(p["allowed_updates"] or DEFAULT_UPDATES)
        if isinstance(offset, int) and offset < 0:
            self._updates = self._updates[offset:]
        elif isinstance(offset, int):
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        self._poller += 1
        self._notify()  # an older poll wakes up to its 409
        me, deadline = self._poller, time.monotonic() + float(p.get("timeout") or 0)
        while True:
            if me != self._poller:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure"
                    " that only one bot instance is running",
                )
            self._check_outage()
            if (ended := self._poll_ended_by_webhook()) is not None:
                raise ended
            if self._updates or self._closing or time.monotonic() >= deadline:
                return copy.deepcopy(self._updates[:limit])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())

    def _m_sendMessage(self, p: JSON) -> JSON:
        chat = self._chat(p)
        text, entities = parse_text(
            _require(p, "text", "message text is empty"), p.get("parse_mode"), p.get("entities")
        )
        if not text:
            raise bad_request("message text is empty")
        if len(text) > MAX_TEXT:
            raise bad_request("message is too long")
        markup = _check_markup(p.get("reply_markup"))
        reply = p.get("reply_parameters") or {}
        reply_id = reply.get("message_id", p.get("reply_to_message_id"))
        replied = self._messages.get((chat["id"], reply_id)) if reply_id is not None else None
        allow_missing = reply.get(
            "allow_sending_without_reply", p.get("allow_sending_without_reply")
        )
        if reply_id is not None and replied is None and not allow_missing:
            raise bad_request("message to be replied not found")
        content: JSON = {"text": text}
        if entities:
            content["entities"] = entities
        if markup and "inline_keyboard" in markup:
            content["reply_markup"] = markup
        if replied is not None:
            content["reply_to_message"] = _without_reply(replied)
        message = self._new_message(chat, self.bot_user, **content)
        now = time.monotonic()
        sent = BotMessage(chat["id"], message["message_id"], text, entities, markup, now, [text])
        self._bot_messages[chat["id"]].append(sent)
        self._events.append(Event("send", chat["id"], now, text, message["message_id"]))
        return message

    def _m_sendMessageDraft(self, p: JSON) -> bool:
        chat = self._chat(p)
        if chat["type"] != "private":
            raise bad_request("TEXTDRAFT_PEER_INVALID")
        draft_id = _require(p, "draft_id", "draft_id is empty")
        if not isinstance(draft_id, int) or draft_id == 0:
            raise bad_request("draft_id must be non-zero")
        text, _ = parse_text(p.get("text") or "", p.get("parse_mode"), p.get("entities"))
        if len(text) > MAX_TEXT:
            raise bad_request("message is too long")
        self._events.append(Event("draft", chat["id"], time.monotonic(), text, draft_id=draft_id))
        return True

    def _m_editMessageText(self, p: JSON) -> JSON:
        chat, sent = self._bot_message(p, "message to edit not found")
        text, entities = parse_text(
            _require(p, "text", "text must be non-empty"), p.get("parse_mode"), p.get("entities")
        )
        if not text:
            raise bad_request("text must be non-empty")
        if len(text) > MAX_TEXT:
            raise bad_request("MESSAGE_TOO_LONG")
        # Like Telegram: an edit without reply_markup removes the inline keyboard.
        return self._edit(chat, sent, text, entities, _check_markup(p.get("reply_markup")))

    def _m_editMessageReplyMarkup(self, p: JSON) -> JSON:
        chat, sent = self._bot_message(p, "message to edit not found")
        markup = _check_markup(p.get("reply_markup"))
        return self._edit(chat, sent, sent.text, sent.entities, markup)

    def _m_deleteMessage(self, p: JSON) -> bool:
        chat = self._chat(p)
        key = (chat["id"], _require(p, "message_id", "message identifier is not specified"))
        message = self._messages.pop(key, None)
        if message is None:
            raise bad_request("message to delete not found")
        for sent in self._bot_messages[chat["id"]]:
            if sent.message_id == key[1]:
                sent.deleted = True
        self._events.append(Event("delete", chat["id"], time.monotonic(), message_id=key[1]))
        return True

    def _m_sendChatAction(self, p: JSON) -> bool:
        chat = self._chat(p)
        action = p.get("action")
        if action not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        self._events.append(Event("action", chat["id"], time.monotonic(), action=action))
        return True

    def _m_answerCallbackQuery(self, p: JSON) -> bool:
        query_id = str(p.get("callback_query_id", ""))
        if self._callbacks.get(query_id, True):
            raise bad_request(
                "query is too old and response timeout expired or query ID is invalid"
            )
        if len(p.get("text") or "") > 200:
            raise bad_request("MESSAGE_TOO_LONG")
        self._callbacks[query_id] = True
        return True

    def _m_setMyCommands(self, p: JSON) -> bool:
        commands = p.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise bad_request("can't parse commands JSON object")
        for command in commands:
            if not BOT_COMMAND_RE.fullmatch(str(command.get("command", ""))):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", "")).strip()) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        stored = [{"command": c["command"], "description": c["description"]} for c in commands]
        self._commands[(_scope_key(p.get("scope")), p.get("language_code") or "")] = stored
        return True

    def _m_getMyCommands(self, p: JSON) -> list[JSON]:
        return self.my_commands(p.get("scope"), p.get("language_code") or "")

    def _m_deleteMyCommands(self, p: JSON) -> bool:
        self._commands.pop((_scope_key(p.get("scope")), p.get("language_code") or ""), None)
        return True

    # ---- internals -------------------------------------------------------------------------

    def _chat(self, p: JSON) -> JSON:
        chat_id = _require(p, "chat_id", "chat_id is empty")
        if isinstance(chat_id, str):  # "@username"
            found = [c for c in self._chats.values() if f"@{c.get('username')}" == chat_id]
            chat_id = found[0]["id"] if found else 0
        if chat_id not in self._chats and chat_id in self._users:
            # A user seen only in groups never started the bot: it may not write to them.
            raise ApiError(403, "Forbidden: bot can't initiate conversation with a user")
        if chat_id not in self._chats:
            raise bad_request("chat not found")
        if chat_id in self._blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return self._chats[chat_id]

    def _bot_message(self, p: JSON, missing: str) -> tuple[JSON, BotMessage]:
        if "inline_message_id" in p:
            raise bad_request("MESSAGE_ID_INVALID")
        chat = self._chat(p)
        message_id = _require(p, "message_id", "message identifier is not specified")
        if (chat["id"], message_id) not in self._messages:
            raise bad_request(missing)
        for sent in self._bot_messages[chat["id"]]:
            if sent.message_id == message_id:
                return chat, sent
        raise bad_request("message can't be edited")

    def _edit(
        self, chat: JSON, sent: BotMessage, text: str, entities: list[JSON], markup: JSON | None
    ) -> JSON:
        if (text, entities, markup) == (sent.text, sent.entities, sent.reply_markup):
            raise bad_request(NOT_MODIFIED[len("Bad Request: ") :])
        message = self._messages[(chat["id"], sent.message_id)]
        message.update(text=text, edit_date=int(time.time()))
        for key, value in (("entities", entities), ("reply_markup", markup)):
            if value:
                message[key] = value
            else:
                message.pop(key, None)
        sent.text, sent.entities, sent.reply_markup = text, entities, markup
        sent.history.append(text)
        self._events.append(Event("edit", chat["id"], time.monotonic(), text, sent.message_id))
        return copy.deepcopy(message)

    def _new_message(self, chat: JSON, sender: JSON, **content: Any) -> JSON:
        message_id = next(self._message_ids[chat["id"]])
        message = {
            "message_id": message_id,
            "from": sender,
            "chat": chat,
            "date": int(time.time()),
            **content,
        }
        self._messages[(chat["id"], message_id)] = message
        return copy.deepcopy(message)

    def _file(self, kind: int, **fields: Any) -> JSON:
        serial = next(self._update_ids)
        return {"file_id": f"AgAC{kind}{serial}fake", "file_unique_id": f"AQAD{serial}", **fields}

    def _push_user_message(
        self,
        user_id: int,
        content: JSON,
        *,
        chat_id: int | None = None,
        chat_type: str = "private",
        username: str | None = None,
        first_name: str | None = None,
        language_code: str | None = "ru",
        reply_to_message_id: int | None = None,
    ) -> JSON:
        user: JSON = {
            "id": user_id,
            "is_bot": False,
            "first_name": first_name or f"User{user_id}",
            "username": username or f"user{user_id}",
        }
        if language_code:
            user["language_code"] = language_code
        self._users[user_id] = user
        if chat_type == "private":
            chat_id = user_id
            chat = {k: user[k] for k in ("id", "first_name", "username")} | {"type": "private"}
        elif chat_id is None:
            raise ValueError("a group message needs a chat_id")
        else:
            chat = {"id": chat_id, "title": f"Test group {chat_id}", "type": chat_type}
        self._chats[chat_id] = chat
        if reply_to_message_id is not None:
            replied = self._messages.get((chat_id, reply_to_message_id))
            if replied is None:
                raise LookupError(f"no message {reply_to_message_id} in chat {chat_id}")
            content = {**content, "reply_to_message": _without_reply(replied)}
        message = self._new_message(chat, user, **content)
        if chat_type != "private" and self.privacy_mode and not self._addressed(message):
            self.dropped_updates.append({"message": message})
            return {"message": message}
        return self.push_update({"message": message})

    def _addressed(self, message: JSON) -> bool:
        """Whether a bot in privacy mode sees this group message."""
        text = message.get("text", "")
        reply = message.get("reply_to_message") or {}
        return (
            text.startswith("/")
            or f"@{self.bot_user['username']}" in text
            or reply.get("from", {}).get("id") == self.bot_user["id"]
        )


def _caption(caption: str | None) -> JSON:
    return {"caption": caption} if caption else {}


def _without_reply(message: JSON) -> JSON:
    return {k: copy.deepcopy(v) for k, v in message.items() if k != "reply_to_message"}


def _scope_key(scope: JSON | None) -> str:
    return json.dumps(scope or {"type": "default"}, sort_keys=True)


def _require(p: JSON, name: str, missing: str) -> Any:
    if p.get(name) in (None, ""):
        raise bad_request(missing)
    return p[name]


def _check_markup(markup: Any) -> JSON | None:
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    for row in markup.get("inline_keyboard", []):
        for button in row:
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= 64:
                raise bad_request("BUTTON_DATA_INVALID")
    return markup


async def _read_params(request: web.Request) -> JSON:
    raw: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        body = await request.json()
        raw.update(body if isinstance(body, dict) else {})
    elif request.content_type == "application/x-www-form-urlencoded":
        body = (await request.read()).decode("latin-1")
        try:  # strictly: aiohttp would put U+FFFD where Telegram refuses invalid UTF-8
            raw.update(urllib.parse.parse_qsl(body, keep_blank_values=True, errors="strict"))
        except UnicodeDecodeError:
            raise bad_request("strings must be encoded in UTF-8") from None
    elif request.method == "POST":
        for key, value in (await request.post()).items():
            raw[key] = (
                value if isinstance(value, str) else f"<file {getattr(value, 'filename', '')}>"
            )
    params: JSON = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            params[key] = value
        elif key in JSON_FIELDS:
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError:
                raise bad_request(f"can't parse {key} JSON object") from None
        elif key in INT_FIELDS and re.fullmatch(r"-?\d+", value):
            params[key] = int(value)
        elif key in BOOL_FIELDS:
            params[key] = value.lower() in ("true", "1")
        else:
            params[key] = value
    return params


def _has_lone_surrogate(value: Any) -> bool:
    """Telegram wants valid UTF-8: a lone UTF-16 surrogate (possible in JSON as an escape like
    \\ud800) is refused like invalid bytes."""
    if isinstance(value, str):
        return any("\ud800" <= char <= "\udfff" for char in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _default_description(status: int, retry_after: int | None) -> str:
    if status == 429:
        return f"Too Many Requests: retry after {retry_after}"
    return HTTPStatus(status).phrase


def _error_body(exc: ApiError) -> JSON:
    body: JSON = {"ok": False, "error_code": exc.status, "description": exc.description}
    if exc.retry_after is not None:
        body["parameters"] = {"retry_after": exc.retry_after}
    return body


def _error(exc: ApiError) -> web.Response:
    return web.json_response(_error_body(exc), status=exc.status)


def _html_error(status: int) -> web.Response:
    title = f"{status} {HTTPStatus(status).phrase}"
    page = f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1>"
    return web.Response(
        text=page + "</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
        status=status,
        content_type="text/html",
    )
