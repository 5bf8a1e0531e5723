"""Message splitting, Markdown to Telegram HTML, and the streaming reply against the fake
Bot API server (a real aiogram Bot, no mocks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from fake_telegram import FakeTelegram

from bot.telegram.access import AccessPolicy
from bot.telegram.delivery import ChatTarget, DraftSupport
from bot.telegram.formatting import MESSAGE_LIMIT, open_fence, split_message, to_html, utf16_len
from bot.telegram.reply import TelegramReply
from bot.telegram.texts import RU

USER = 1001


def test_split_prefers_paragraphs_then_sentences() -> None:
    first = "Первый абзац. " * 20
    second = "Второй абзац, подлиннее. " * 30
    pieces = split_message(f"{first}\n\n{second}", limit=len(first) + 100)
    assert pieces[0] == first.strip()
    sentences = split_message("Раз два три. Четыре пять! Шесть семь восемь?", limit=30)
    assert sentences == ["Раз два три. Четыре пять!", "Шесть семь восемь?"]


def test_split_keeps_every_character_and_respects_the_limit() -> None:
    text = ("слово " * 900 + "\n\n" + "😀" * 3000 + "x" * 5000).strip()
    pieces = split_message(text)
    assert len(pieces) >= 3
    assert all(utf16_len(piece) <= MESSAGE_LIMIT for piece in pieces)  # emoji count twice
    assert "".join("".join(pieces).split()) == "".join(text.split())
    assert split_message("   ") == [] and split_message("коротко") == ["коротко"]


def test_markdown_becomes_escaped_telegram_html() -> None:
    html = to_html("**Жирный** и <script> & `код`")
    assert html == "<b>Жирный</b> и &lt;script&gt; &amp; <code>код</code>"


def test_access_lists_take_ids_and_usernames() -> None:
    policy = AccessPolicy.from_lists(["123", " @Alice ", "bob_2"], ["@Admin"])
    assert policy.usernames == {"alice", "bob_2", "admin"}
    # Names count only as bound to an account (the middleware binds them in the database).
    assert policy.is_allowed(123) and policy.is_allowed(5, {"alice"})
    assert policy.is_allowed(6, {"bob_2"}) and policy.is_allowed(7, {"admin"})
    assert policy.is_admin(7, {"admin"}) and not policy.is_admin(123)
    assert not policy.is_allowed(8, {"mallory"}) and not policy.is_allowed(9)
    only_admins = AccessPolicy.from_lists([], ["42"])
    assert only_admins.is_allowed(42) and not only_admins.is_allowed(43)
    with pytest.raises(ValueError, match="neither a numeric"):
        AccessPolicy.from_lists(["@bad name!"], [])


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        server.push_message(USER, "hi")  # makes the chat known to the server
        yield server


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    bot = Bot(tg.token, session=AiohttpSession(api=tg.api_server()))
    yield bot
    await bot.session.close()


def reply(bot: Bot, *, drafts: bool | DraftSupport = True, interval: float = 0.05) -> TelegramReply:
    support = drafts if isinstance(drafts, DraftSupport) else DraftSupport(drafts)
    return TelegramReply(bot, ChatTarget(USER), drafts=support, interval=interval, texts=RU)


async def test_final_reply_is_sent_as_html(tg: FakeTelegram, bot: Bot) -> None:
    ids = await reply(bot).finish("Ответ: **важно** и `x < y`", ["примечание"])
    [message] = tg.sent_messages(USER)
    assert ids == [message.message_id]
    assert message.text == "Ответ: важно и x < y\n\nпримечание"
    kinds = [e["type"] for e in message.entities]
    assert kinds == ["bold", "code", "italic"]


async def test_rejected_entities_fall_back_to_plain_text(tg: FakeTelegram, bot: Bot) -> None:
    tg.fail_next("sendMessage", status=400, description="Bad Request: can't parse entities: x")
    await reply(bot).finish("**жирный** текст", [])
    [message] = tg.sent_messages(USER)
    assert message.text == "**жирный** текст" and not message.entities


async def test_unchanged_text_is_never_sent_twice(tg: FakeTelegram, bot: Bot) -> None:
    streaming = reply(bot)
    await streaming.update("Раз")
    await tg.wait_for(lambda: tg.drafts(USER))
    await streaming.update("Раз")
    await streaming.update("Раз ")  # renders the same
    await streaming.update("Раз два")
    await tg.wait_for(lambda: len(tg.drafts(USER)) == 2)
    await streaming.finish("Раз два", [])
    assert [d.text for d in tg.drafts(USER)] == ["Раз", "Раз два"]
    assert tg.texts(USER) == ["Раз два"]


async def test_refused_drafts_fall_back_to_edits(tg: FakeTelegram, bot: Bot) -> None:
    tg.disable_method("sendMessageDraft")
    support = DraftSupport(True)
    streaming = reply(bot, drafts=support)
    await streaming.update("Раз")
    await tg.wait_for(lambda: tg.sent_messages(USER))
    await streaming.update("Раз два")
    await tg.wait_for(lambda: tg.edits(USER))
    await streaming.finish("Раз два три", [])
    [message] = tg.sent_messages(USER)
    assert message.history == ["Раз", "Раз два", "Раз два три"]
    assert support.enabled is False  # later replies do not ask again


def test_a_code_block_cut_in_two_is_closed_and_reopened() -> None:
    code = "\n".join(f"    x{i} = {i}  # строка {i}" for i in range(60))
    text = f"Пример:\n\n```python\n{code}\n```\n\nПосле кода."
    pieces = split_message(text, limit=400)
    assert len(pieces) >= 3
    assert all(utf16_len(piece) <= 400 for piece in pieces)
    assert all(open_fence(piece) is None for piece in pieces)
    assert all(piece.count("```") % 2 == 0 for piece in pieces)
    assert pieces[1].startswith("```python\n    x")  # indentation inside the block is kept
    html = [to_html(piece) for piece in pieces]
    assert all('<pre><code class="language-python">' in h for h in html)
    assert html[-1].endswith("</code></pre>\n\nПосле кода.")
    lines = [line for piece in pieces for line in piece.splitlines() if "строка" in line]
    assert lines == code.splitlines()  # nothing lost or doubled at the cuts


@pytest.mark.parametrize("drafts", [True, False])
async def test_a_long_code_reply_streams_into_messages_that_each_hold_a_code_block(
    tg: FakeTelegram, bot: Bot, drafts: bool
) -> None:
    code = "\n".join(f"    value_{i} = compute({i})  # шаг {i}" for i in range(220))
    text = f"Вот код:\n\n```python\n{code}\n```\n\nГотово."
    streaming = reply(bot, drafts=drafts, interval=0.01)
    for end in range(200, len(text), 700):
        await streaming.update(text[:end])
        await asyncio.sleep(0.03)
    ids = await streaming.finish(text, [])
    messages = tg.sent_messages(USER)
    assert len(messages) >= 3 and ids == [m.message_id for m in messages]
    for message in messages:
        assert [e["type"] for e in message.entities][:1] == ["pre"], message.text[:80]
    shown = [line for m in messages for line in m.text.splitlines() if "шаг" in line]
    assert [line.strip() for line in shown] == [line.strip() for line in code.splitlines()]
    assert messages[-1].text.endswith("Готово.")


async def test_edit_mode_never_repeats_an_unchanged_text(tg: FakeTelegram, bot: Bot) -> None:
    streaming = reply(bot, drafts=False)
    for text in ("Раз", "Раз ", "Раз", "Раз два", "Раз два\n"):
        await streaming.update(text)
        await asyncio.sleep(0.1)
    await streaming.finish("Раз два", [])
    assert tg.sent_messages(USER)[0].history == ["Раз", "Раз два"]
    assert all(call.status == 200 for call in tg.calls("editMessageText"))


async def test_a_deleted_reply_message_goes_on_in_a_new_one(tg: FakeTelegram, bot: Bot) -> None:
    streaming = reply(bot, drafts=False)
    await streaming.update("Начало")
    await tg.wait_for(lambda: tg.sent_messages(USER))
    tg.fail_next(
        "editMessageText", status=400, description="Bad Request: message to edit not found"
    )
    ids = await streaming.finish("Начало и конец", [])
    first, second = tg.sent_messages(USER)
    assert first.text == "Начало" and second.text == "Начало и конец"
    assert ids == [second.message_id]


async def test_drafts_refused_in_one_chat_stay_on_for_the_others(
    tg: FakeTelegram, bot: Bot
) -> None:
    tg.fail_next("sendMessageDraft", status=400, description="Bad Request: TEXTDRAFT_PEER_INVALID")
    support = DraftSupport(True)
    streaming = reply(bot, drafts=support)
    await streaming.update("Раз")
    await tg.wait_for(lambda: tg.sent_messages(USER))
    await streaming.finish("Раз два", [])
    assert tg.sent_messages(USER)[0].history == ["Раз", "Раз два"]
    assert support.enabled, "one chat's refusal must not switch drafts off for everybody"


async def test_a_user_who_blocked_the_bot_is_not_hammered(tg: FakeTelegram, bot: Bot) -> None:
    tg.block(USER)
    support = DraftSupport(True)
    streaming = reply(bot, drafts=support)
    for text in ("Раз", "Раз два", "Раз два три", "Раз два три четыре"):
        await streaming.update(text)
        await asyncio.sleep(0.15)
    assert await streaming.finish("Раз два три четыре", []) == []
    writes = [c for c in tg.calls() if c.method in ("sendMessageDraft", "sendMessage")]
    assert len(writes) == 1 and writes[0].status == 403
    assert support.enabled
