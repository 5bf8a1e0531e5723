"""Message splitting, Markdown to Telegram HTML, and the streaming reply against the fake
Bot API server (a real aiogram Bot, no mocks)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from fake_telegram import FakeTelegram

from bot.access import AccessPolicy
from bot.services.formatting import MESSAGE_LIMIT, split_message, to_html, utf16_len
from bot.services.streaming import DraftSupport, TelegramReply

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
    assert policy.is_allowed(123, None) and policy.is_allowed(5, "alice")
    assert policy.is_allowed(6, "BOB_2") and policy.is_allowed(7, "admin")
    assert policy.is_admin(7, "Admin") and not policy.is_admin(123, None)
    assert not policy.is_allowed(8, "mallory") and not policy.is_allowed(9, None)
    only_admins = AccessPolicy.from_lists([], ["42"])
    assert only_admins.is_allowed(42, None) and not only_admins.is_allowed(43, None)
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


def reply(bot: Bot, *, drafts: bool = True, interval: float = 0.05) -> TelegramReply:
    return TelegramReply(bot, USER, private=True, drafts=DraftSupport(drafts), interval=interval)


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
    streaming = TelegramReply(bot, USER, private=True, drafts=support, interval=0.05)
    await streaming.update("Раз")
    await tg.wait_for(lambda: tg.sent_messages(USER))
    await streaming.update("Раз два")
    await tg.wait_for(lambda: tg.edits(USER))
    await streaming.finish("Раз два три", [])
    [message] = tg.sent_messages(USER)
    assert message.history == ["Раз", "Раз два", "Раз два три"]
    assert support.enabled is False  # later replies do not ask again
