"""The fake Bot API server answers a real aiogram Bot the way Telegram does."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    BotCommand,
    BotCommandScopeAllGroupChats,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    ReplyParameters,
)
from fake_telegram import NOT_MODIFIED, FakeTelegram

USER = 42
GROUP = -1001234567890


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    bot = Bot(tg.token, session=AiohttpSession(api=tg.api_server()))
    tg.push_message(USER, "привет")  # the user has started the bot: its chat exists
    yield bot
    await bot.session.close()


def keyboard(*data: str) -> InlineKeyboardMarkup:
    buttons = [InlineKeyboardButton(text=f"btn {d}", callback_data=d) for d in data]
    return InlineKeyboardMarkup(inline_keyboard=[buttons])


async def test_get_me_describes_the_bot(bot: Bot, tg: FakeTelegram) -> None:
    me = await bot.get_me()
    assert (me.id, me.is_bot, me.username) == (123456789, True, "domovoy_test_bot")
    assert me.can_read_all_group_messages is True
    assert [c.method for c in tg.calls()] == ["getMe"]


async def test_wrong_token_and_unknown_method(bot: Bot, tg: FakeTelegram) -> None:
    stranger = Bot("987654321:AAwrong-token", session=AiohttpSession(api=tg.api_server()))
    with pytest.raises(TelegramUnauthorizedError, match="Unauthorized"):
        await stranger.get_me()
    await stranger.session.close()
    with pytest.raises(TelegramNotFound, match="Not Found"):
        await bot.get_chat(USER)  # a real method this fake does not serve: 404 like Telegram


async def test_send_message_returns_a_message_aiogram_parses(bot: Bot, tg: FakeTelegram) -> None:
    sent = await bot.send_message(USER, "Привет, <b>мир</b> &amp; 👋", parse_mode="HTML")
    assert isinstance(sent, Message)
    assert sent.chat.id == USER and sent.chat.type == "private"
    assert sent.from_user is not None and sent.from_user.id == bot.id
    assert sent.text == "Привет, мир & 👋"
    assert sent.entities is not None
    assert [(e.type, e.offset, e.length) for e in sent.entities] == [("bold", 8, 3)]
    assert sent.html_text == "Привет, <b>мир</b> &amp; 👋"
    second = await bot.send_message(USER, "ещё", reply_parameters=ReplyParameters(message_id=1))
    assert second.message_id == sent.message_id + 1
    assert second.reply_to_message is not None and second.reply_to_message.text == "привет"
    assert tg.texts(USER) == ["Привет, мир & 👋", "ещё"]
    assert [e.kind for e in tg.transcript(USER)] == ["send", "send"]


async def test_send_to_unknown_chat_or_blocked_user(bot: Bot, tg: FakeTelegram) -> None:
    with pytest.raises(TelegramBadRequest, match="Bad Request: chat not found"):
        await bot.send_message(777, "hi")
    tg.block(USER)
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.send_message(USER, "hi")


async def test_4096_limit_counts_text_after_entity_parsing(bot: Bot, tg: FakeTelegram) -> None:
    await bot.send_message(USER, "я" * 4096)
    await bot.send_message(USER, "<b>" + "a" * 4096 + "</b>", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest) as too_long:
        await bot.send_message(USER, "я" * 4097)
    assert too_long.value.message == "Bad Request: message is too long"
    with pytest.raises(TelegramBadRequest) as empty:
        await bot.send_message(USER, " \n ")
    assert empty.value.message == "Bad Request: message text is empty"
    assert [len(t) for t in tg.texts(USER)] == [4096, 4096]
    assert [c.status for c in tg.calls("sendMessage")] == [200, 200, 400, 400]


@pytest.mark.parametrize(
    ("html", "reason"),
    [
        ("<b>жирный", 'Can\'t find end tag corresponding to start tag "b"'),
        ("строка<br>строка", 'Unsupported start tag "br" at byte offset 12'),
        ("<b>a</i></b>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("a</b>", "Unexpected end tag at byte offset 1"),
        ("1 < 2", 'Unsupported start tag "" at byte offset 2'),
        ('<span class="x">s</span>', 'Unsupported start tag "span" at byte offset 0'),
    ],
)
async def test_bad_html_cannot_be_parsed(
    bot: Bot, tg: FakeTelegram, html: str, reason: str
) -> None:
    with pytest.raises(TelegramBadRequest) as error:
        await bot.send_message(USER, html, parse_mode="HTML")
    assert error.value.message == f"Bad Request: can't parse entities: {reason}"
    assert tg.texts(USER) == []


async def test_supported_html_becomes_entities(bot: Bot) -> None:
    html = (
        '<a href="https://x.org/?a=1&amp;b=2">ссылка</a> <tg-spoiler>s</tg-spoiler>'
        ' <span class="tg-spoiler">t</span> <pre><code class="language-python">x = 1</code></pre>'
        " <blockquote expandable>q</blockquote> <s>z</s><u>u</u><i>i</i><code>c</code>"
    )
    sent = await bot.send_message(USER, html, parse_mode="HTML")
    assert sent.entities is not None
    found = {e.type: e for e in sent.entities}
    assert set(found) == {
        "text_link",
        "spoiler",
        "pre",
        "expandable_blockquote",
        "strikethrough",
        "underline",
        "italic",
        "code",
    }
    assert found["text_link"].url == "https://x.org/?a=1&b=2"
    assert found["pre"].language == "python"
    assert sent.text == "ссылка s t x = 1 q zuic"


async def test_edit_message_text(bot: Bot, tg: FakeTelegram) -> None:
    sent = await bot.send_message(USER, "Думаю…", reply_markup=keyboard("stop"))
    with pytest.raises(TelegramBadRequest) as same:
        await bot.edit_message_text(
            "Думаю…", chat_id=USER, message_id=sent.message_id, reply_markup=keyboard("stop")
        )
    assert same.value.message == NOT_MODIFIED
    edited = await bot.edit_message_text("Думаю…", chat_id=USER, message_id=sent.message_id)
    assert isinstance(edited, Message) and edited.reply_markup is None  # keyboard dropped
    final = await bot.edit_message_text(
        "Ответ <i>готов</i>", chat_id=USER, message_id=sent.message_id, parse_mode="HTML"
    )
    assert isinstance(final, Message) and final.entities is not None
    with pytest.raises(TelegramBadRequest, match="Bad Request: message is not modified: "):
        await bot.edit_message_text(
            "Ответ готов", chat_id=USER, message_id=sent.message_id, entities=final.entities
        )
    with pytest.raises(TelegramBadRequest, match="Bad Request: MESSAGE_TOO_LONG"):
        await bot.edit_message_text("x" * 4097, chat_id=USER, message_id=sent.message_id)
    with pytest.raises(TelegramBadRequest) as missing:
        await bot.edit_message_text("x", chat_id=USER, message_id=999)
    assert missing.value.message == "Bad Request: message to edit not found"
    with pytest.raises(TelegramBadRequest, match="message can't be edited"):
        await bot.edit_message_text("x", chat_id=USER, message_id=1)  # the user's own message
    (message,) = tg.sent_messages(USER)
    assert message.history == ["Думаю…", "Думаю…", "Ответ готов"]
    assert [e.text for e in tg.edits(USER)] == ["Думаю…", "Ответ готов"]
    assert tg.edits(USER)[0].at <= tg.edits(USER)[1].at


async def test_edit_reply_markup_delete_and_callbacks(bot: Bot, tg: FakeTelegram) -> None:
    sent = await bot.send_message(USER, "Удалить всё?", reply_markup=keyboard("yes", "no"))
    update = tg.press_button(USER, sent.message_id, data="yes")
    query = update["callback_query"]
    assert query["data"] == "yes" and query["message"]["message_id"] == sent.message_id
    assert await bot.answer_callback_query(query["id"], text="Готово") is True
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_callback_query(query["id"])
    await bot.edit_message_reply_markup(chat_id=USER, message_id=sent.message_id)
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_reply_markup(chat_id=USER, message_id=sent.message_id)
    with pytest.raises(LookupError):
        tg.press_button(USER, sent.message_id, data="yes")  # the keyboard is gone
    assert await bot.delete_message(USER, sent.message_id) is True
    with pytest.raises(TelegramBadRequest, match="Bad Request: message to delete not found"):
        await bot.delete_message(USER, sent.message_id)
    assert tg.texts(USER) == [] and tg.sent_messages(USER)[0].deleted
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(USER, "x", reply_markup=keyboard("д" * 33))


async def test_chat_action(bot: Bot, tg: FakeTelegram) -> None:
    assert await bot.send_chat_action(USER, "typing") is True
    with pytest.raises(TelegramBadRequest, match="wrong parameter action in request"):
        await bot.send_chat_action(USER, "dancing")
    assert [(e.kind, e.action) for e in tg.transcript(USER)] == [("action", "typing")]
    assert tg.calls("sendChatAction")[0].params == {"chat_id": USER, "action": "typing"}


async def test_injected_429_surfaces_as_retry_after(bot: Bot, tg: FakeTelegram) -> None:
    sent = await bot.send_message(USER, "a")
    tg.fail_next("editMessageText", retry_after=3)
    with pytest.raises(TelegramRetryAfter) as flood:
        await bot.edit_message_text("ab", chat_id=USER, message_id=sent.message_id)
    assert flood.value.retry_after == 3
    assert "Too Many Requests: retry after 3" in flood.value.message
    await bot.edit_message_text("ab", chat_id=USER, message_id=sent.message_id)
    assert [c.status for c in tg.calls("editMessageText")] == [429, 200]
    assert tg.texts(USER) == ["ab"]  # the failed call changed nothing, the retry did


async def test_server_errors_and_outage(bot: Bot, tg: FakeTelegram) -> None:
    tg.fail_next("sendMessage", status=502, count=2)
    for _ in range(2):
        with pytest.raises(TelegramServerError, match="Bad Gateway"):
            await bot.send_message(USER, "x")
    tg.fail_next("*", status=502, html=True)  # nginx's page, not JSON
    with pytest.raises(ClientDecodeError):
        await bot.get_me()
    tg.outage(30)
    with pytest.raises(TelegramServerError):
        await bot.get_me()
    with pytest.raises(TelegramServerError):
        await bot.get_updates(timeout=0)
    tg.end_outage()
    await bot.send_message(USER, "x")
    assert tg.texts(USER) == ["x"]


async def test_flood_limit_per_chat(bot: Bot, tg: FakeTelegram) -> None:
    tg.set_flood_limit(2, retry_after=1)
    sent = await bot.send_message(USER, "0")
    await bot.edit_message_text("1", chat_id=USER, message_id=sent.message_id)
    with pytest.raises(TelegramRetryAfter) as flood:
        await bot.edit_message_text("2", chat_id=USER, message_id=sent.message_id)
    assert flood.value.retry_after == 1
    with pytest.raises(TelegramRetryAfter):  # retrying inside the penalty is refused too
        await bot.edit_message_text("2", chat_id=USER, message_id=sent.message_id)
    await asyncio.sleep(1.05)
    await bot.edit_message_text("2", chat_id=USER, message_id=sent.message_id)
    assert tg.texts(USER) == ["2"]


async def test_get_updates_long_polls_and_respects_offset(bot: Bot, tg: FakeTelegram) -> None:
    (first,) = await bot.get_updates(timeout=0)
    assert first.message is not None and first.message.text == "привет"
    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(offset=first.update_id + 1, timeout=10))
    await asyncio.sleep(0.3)
    assert not poll.done()  # waiting: nothing new yet
    tg.push_message(USER, "как дела?")
    (second,) = await poll
    assert time.monotonic() - started < 5
    assert second.update_id == first.update_id + 1
    assert second.message is not None and second.message.text == "как дела?"
    assert second.message.from_user is not None and second.message.from_user.language_code == "ru"
    assert await bot.get_updates(offset=second.update_id + 1, timeout=0) == []
    assert await bot.get_updates(timeout=0) == []  # confirmed updates are gone for good
    started = time.monotonic()
    assert await bot.get_updates(timeout=1) == []
    assert time.monotonic() - started >= 0.9


async def test_allowed_updates_and_conflicting_pollers(bot: Bot, tg: FakeTelegram) -> None:
    (update,) = await bot.get_updates(allowed_updates=["message"], timeout=0)
    tg.push_edited_message(USER, 1, "привет!")
    assert [u.get("edited_message", {}).get("text") for u in tg.dropped_updates] == ["привет!"]
    first = asyncio.create_task(bot.get_updates(offset=update.update_id + 1, timeout=10))
    await asyncio.sleep(0.2)
    second = asyncio.create_task(bot.get_updates(offset=update.update_id + 1, timeout=10))
    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates request"):
        await first
    tg.push_message(USER, "ещё")
    assert [u.message.text for u in await second if u.message] == ["ещё"]


async def test_pushed_updates_are_realistic(bot: Bot, tg: FakeTelegram) -> None:
    (first,) = await bot.get_updates(allowed_updates=[], timeout=0)  # default set: edits too
    tg.push_message(USER, "/start@domovoy_test_bot", language_code="en")
    tg.push_photo(USER, caption="что это?")
    tg.push_voice(USER)
    tg.push_sticker(USER)
    tg.push_document(USER, file_name="a.txt")
    tg.push_group_message(7, GROUP, "скажи привет", mention=True, username="petya")
    tg.push_edited_message(USER, 2, "/help")
    updates = await bot.get_updates(offset=first.update_id + 1, timeout=0)
    command, photo, voice, sticker, document, group, edited = updates
    assert command.message is not None and command.message.entities is not None
    assert command.message.entities[0].type == "bot_command"
    assert command.message.entities[0].length == len("/start@domovoy_test_bot")
    assert photo.message is not None and photo.message.photo and photo.message.caption
    assert voice.message is not None and voice.message.voice is not None
    assert sticker.message is not None and sticker.message.sticker is not None
    assert document.message is not None and document.message.document is not None
    assert group.message is not None and group.message.chat.type == "supergroup"
    assert group.message.text == "@domovoy_test_bot скажи привет"
    assert group.message.entities is not None and group.message.entities[0].type == "mention"
    assert edited.edited_message is not None and edited.edited_message.text == "/help"
    assert edited.edited_message.edit_date is not None


async def test_privacy_mode_hides_unaddressed_group_messages() -> None:
    async with FakeTelegram(privacy_mode=True) as tg:
        tg.push_group_message(7, GROUP, "просто болтаем")
        tg.push_group_message(7, GROUP, "вопрос", mention=True)
        assert [u["message"]["text"] for u in tg.dropped_updates] == ["просто болтаем"]


async def test_message_drafts(bot: Bot, tg: FakeTelegram) -> None:
    assert await bot.send_message_draft(USER, draft_id=5, text="Част") is True
    assert (
        await bot.send_message_draft(USER, draft_id=5, text="<b>Частичный</b>", parse_mode="HTML")
        is True
    )
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message_draft(USER, draft_id=5, text="<b>Частичный", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match="draft_id"):
        await bot.send_message_draft(USER, draft_id=0, text="x")
    assert [(d.draft_id, d.text) for d in tg.drafts(USER)] == [(5, "Част"), (5, "Частичный")]
    tg.push_group_message(7, GROUP, "привет", mention=True)
    with pytest.raises(TelegramBadRequest, match="Bad Request: TEXTDRAFT_PEER_INVALID"):
        await bot.send_message_draft(GROUP, draft_id=1, text="x")
    tg.disable_method("sendMessageDraft")
    with pytest.raises(TelegramNotFound) as off:
        await bot.send_message_draft(USER, draft_id=5, text="x")
    assert off.value.message == "Not Found"
    assert tg.calls("sendMessageDraft")[-1].response == {
        "ok": False,
        "error_code": 404,
        "description": "Not Found",
    }
    tg.enable_method("sendMessageDraft")
    assert await bot.send_message_draft(USER, draft_id=6, text="x") is True


async def test_commands_are_stored_per_scope_and_language(bot: Bot, tg: FakeTelegram) -> None:
    ru = [
        BotCommand(command="start", description="Начать"),
        BotCommand(command="reset", description="Сброс"),
    ]
    en = [BotCommand(command="start", description="Start")]
    assert await bot.set_my_commands(ru) is True
    assert await bot.set_my_commands(en, language_code="en") is True
    assert await bot.set_my_commands(en[:1], scope=BotCommandScopeAllGroupChats()) is True
    assert [c.model_dump() for c in await bot.get_my_commands()] == [c.model_dump() for c in ru]
    (got,) = await bot.get_my_commands(language_code="en")
    assert (got.command, got.description) == ("start", "Start")
    assert await bot.get_my_commands(language_code="de") == []
    assert tg.my_commands({"type": "all_group_chats"}) == [
        {"command": "start", "description": "Start"}
    ]
    with pytest.raises(TelegramBadRequest, match="BOT_COMMAND_INVALID"):
        await bot.set_my_commands([BotCommand(command="Start!", description="x")])
    assert await bot.delete_my_commands(language_code="en") is True
    assert await bot.get_my_commands(language_code="en") == []


async def test_wait_for(tg: FakeTelegram, bot: Bot) -> None:
    later = asyncio.get_running_loop().call_later(
        0.2, lambda: asyncio.ensure_future(bot.send_message(USER, "готово"))
    )
    assert await tg.wait_for(lambda: tg.texts(USER), timeout=5) == ["готово"]
    later.cancel()
    with pytest.raises(AssertionError, match="condition not met"):
        await tg.wait_for(lambda: len(tg.texts(USER)) > 1, timeout=0.3)


async def test_dispatcher_polling_survives_an_outage(tg: FakeTelegram) -> None:
    """The whole aiogram polling loop runs against the fake, through a 5xx outage."""
    bot = Bot(tg.token, session=AiohttpSession(api=tg.api_server()))
    dp = Dispatcher()

    @dp.message()
    async def echo(message: Message) -> None:
        await message.answer(f"эхо: {message.text}")

    polling = asyncio.create_task(dp.start_polling(bot, polling_timeout=1, handle_signals=False))
    tg.push_message(USER, "раз")
    await tg.wait_for(lambda: tg.texts(USER) == ["эхо: раз"], timeout=10)
    tg.outage(1.5)
    await tg.wait_for(lambda: any(c.status == 502 for c in tg.calls("getUpdates")), timeout=5)
    tg.push_message(USER, "два")
    await tg.wait_for(lambda: tg.texts(USER)[-1:] == ["эхо: два"], timeout=15)
    await dp.stop_polling()
    await polling
    await bot.session.close()


async def test_wire_format_for_other_clients(tg: FakeTelegram) -> None:
    """JSON bodies and query strings work too, and error bodies are Telegram's exact JSON."""
    tg.push_message(USER, "привет")
    api = f"{tg.base_url}/bot{tg.token}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api}/sendMessage", json={"chat_id": USER, "text": "hi"}) as resp:
            sent = await resp.json()
        async with http.get(f"{api}/GETME") as resp:  # method names are case-insensitive
            me = await resp.json()
        async with http.post(f"{api}/sendMessageAsPigeon") as resp:
            unknown = (resp.status, await resp.json())
        tg.fail_next("sendMessage", retry_after=7)
        async with http.post(f"{api}/sendMessage?chat_id={USER}&text=hi") as resp:
            flood = (resp.status, await resp.json())
    assert sent["ok"] and sent["result"]["text"] == "hi" and sent["result"]["chat"]["id"] == USER
    assert me["result"]["username"] == "domovoy_test_bot"
    assert unknown == (404, {"ok": False, "error_code": 404, "description": "Not Found"})
    assert flood == (
        429,
        {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 7",
            "parameters": {"retry_after": 7},
        },
    )


async def test_lone_surrogates_are_delivered_but_refused_when_sent(tg: FakeTelegram) -> None:
    """Updates may carry a lone UTF-16 surrogate (JSON escapes allow it); what the bot sends
    must be valid UTF-8, as Telegram demands."""
    update = tg.push_message(USER, "a \ud800 b /start")
    assert update["message"]["entities"] == [{"type": "bot_command", "offset": 6, "length": 6}]
    api = f"{tg.base_url}/bot{tg.token}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api}/getUpdates") as resp:
            delivered = (await resp.json())["result"][0]["message"]["text"]
        body = json.dumps({"chat_id": USER, "text": "x \ud800 y"})  # as the escape \\ud800
        headers = {"Content-Type": "application/json"}
        async with http.post(f"{api}/sendMessage", data=body, headers=headers) as resp:
            refused = (resp.status, await resp.json())
        form = f"chat_id={USER}&text=x+%ED%A0%80+y".encode()  # the surrogate's UTF-8 bytes
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        async with http.post(f"{api}/sendMessage", data=form, headers=headers) as resp:
            raw = resp.status
    assert delivered == "a \ud800 b /start"
    assert refused == (
        400,
        {
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: strings must be encoded in UTF-8",
        },
    )
    assert raw == 400
    assert tg.texts(USER) == []


async def test_a_user_seen_only_in_groups_cannot_be_written_to(bot: Bot, tg: FakeTelegram) -> None:
    tg.push_group_message(77, GROUP, "hello")
    with pytest.raises(TelegramForbiddenError, match="bot can't initiate conversation"):
        await bot.send_message(77, "hi")
    await bot.send_message(GROUP, "hi all")
    assert tg.texts(GROUP) == ["hi all"]


async def test_group_flood_limit_per_minute(bot: Bot, tg: FakeTelegram) -> None:
    tg.push_group_message(USER, GROUP, "hello")
    tg.set_flood_limit(None, group_per_minute=3, minute=0.5, retry_after=1)
    for n in range(3):
        await bot.send_message(GROUP, str(n))
    with pytest.raises(TelegramRetryAfter):
        await bot.send_message(GROUP, "3")
    await bot.send_message(USER, "private chats have no per-minute limit")
    assert [(chat, method) for chat, method, _ in tg.flood_refusals] == [(GROUP, "sendmessage")]
    await asyncio.sleep(1.05)  # the penalty and the window are over
    await bot.send_message(GROUP, "3")
    assert tg.texts(GROUP) == ["0", "1", "2", "3"]


async def test_a_burst_from_ten_users_arrives_interleaved_and_numbered(
    bot: Bot, tg: FakeTelegram
) -> None:
    users = list(range(100, 110))
    pushed = tg.push_burst(users, 3)
    group = tg.push_burst(users[:2], 2, chat_id=GROUP, text="{user}/{n}", first=5)
    updates = await bot.get_updates(offset=pushed[0]["update_id"], limit=100)
    assert len(updates) == 30 + 4
    ids = [u.update_id for u in updates]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    texts = [u.message.text for u in updates if u.message is not None]
    assert texts[:11] == [f"{user}: message 0" for user in users] + ["100: message 1"]
    assert [(u.message.from_user.id, u.message.text) for u in updates[-4:] if u.message] == [
        (100, "@domovoy_test_bot 100/5"),
        (101, "@domovoy_test_bot 101/5"),
        (100, "@domovoy_test_bot 100/6"),
        (101, "@domovoy_test_bot 101/6"),
    ]
    assert group[0]["message"]["entities"][0]["type"] == "mention"


async def test_every_nth_call_fails_until_stopped(bot: Bot, tg: FakeTelegram) -> None:
    tg.fail_every("sendMessage", 3, retry_after=4)
    outcomes = []
    for n in range(7):
        try:
            await bot.send_message(USER, str(n))
            outcomes.append("ok")
        except TelegramRetryAfter as exc:
            outcomes.append(f"429/{exc.retry_after}")
    assert outcomes == ["ok", "ok", "429/4", "ok", "ok", "429/4", "ok"]
    await bot.get_me()  # other methods are untouched
    tg.fail_every("*", 1, status=502)
    with pytest.raises(TelegramServerError):
        await bot.get_me()
    assert await bot.get_updates(timeout=0) is not None  # polling is left alone by "*"
    tg.stop_failing("*")
    tg.stop_failing("sendMessage")
    for n in range(3):
        await bot.send_message(USER, f"again {n}")
    assert tg.texts(USER)[-3:] == ["again 0", "again 1", "again 2"]


async def test_a_scheduled_outage_window(bot: Bot, tg: FakeTelegram) -> None:
    tg.outage(1.5, start_in=1.0)
    ((start, end),) = tg.outages
    assert round(end - start, 3) == 1.5
    await bot.send_message(USER, "before")  # the window has not begun
    poll = asyncio.create_task(bot.get_updates(offset=10**12, timeout=10))
    await asyncio.sleep(start - time.monotonic() + 0.05)
    with pytest.raises(TelegramServerError, match="Bad Gateway"):
        await bot.send_message(USER, "during")
    with pytest.raises(TelegramServerError):  # the waiting long poll failed when it began
        await asyncio.wait_for(poll, 5.0)
    await asyncio.sleep(end - time.monotonic() + 0.05)
    await bot.send_message(USER, "after")
    assert tg.texts(USER) == ["before", "after"]
