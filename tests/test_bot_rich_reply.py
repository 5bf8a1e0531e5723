"""The rich reply (sendRichMessageDraft + sendRichMessage) against the fake Bot API server,
with a real aiogram Bot: splitting, notes, and the fallbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from fake_telegram import FakeTelegram
from fake_telegram_rich import RICH_LIMIT

from bot.telegram.delivery import ChatTarget, DraftSupport
from bot.telegram.formatting import MESSAGE_LIMIT, open_fence
from bot.telegram.reply import TelegramReply
from bot.telegram.rich_delivery import markdown_notes
from bot.telegram.texts import RU

USER = 1001


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        server.push_message(USER, "hi")
        yield server


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    bot = Bot(tg.token, session=AiohttpSession(api=tg.api_server()))
    yield bot
    await bot.session.close()


def rich_reply(bot: Bot, support: DraftSupport | None = None) -> TelegramReply:
    support = support or DraftSupport(True, rich=True)
    return TelegramReply(bot, ChatTarget(USER), drafts=support, interval=0.05, texts=RU)


async def test_markdown_goes_to_telegram_unconverted(tg: FakeTelegram, bot: Bot) -> None:
    text = "| a | b |\n|---|---|\n| 1 | 2 |\n\n$$x^2$$ и **жирный**"
    streaming = rich_reply(bot)
    await streaming.update(text[:20])
    await tg.wait_for(lambda: tg.rich_drafts(USER))
    ids = await streaming.finish(text, ["примечание (важно)"])
    [message] = tg.sent_messages(USER)
    assert message.rich and ids == [message.message_id]
    assert message.text == text + "\n\n_примечание \\(важно\\)_"
    draft_call = tg.calls("sendRichMessageDraft")[0].params
    assert draft_call["can_stop"] is True and draft_call["keep_on_stop"] is True
    assert draft_call["rich_message"] == {"markdown": text[:20].strip()}
    assert not tg.drafts(USER) and not tg.calls("sendMessage")


def test_notes_are_escaped_italic_markdown() -> None:
    assert markdown_notes("<i>a_b &amp; c</i>\n\n<i>(x)</i>") == "_a\\_b & c_\n\n_\\(x\\)_"


async def test_a_reply_past_the_rich_limit_is_split_with_fences_reopened(
    tg: FakeTelegram, bot: Bot
) -> None:
    code = "\n".join(f"x{i} = {i}  # строка номер {i}" for i in range(1500))
    prose = "Абзац про код. " * 800
    text = f"{prose}\n\n```python\n{code}\n```\n\nКонец."
    assert len(text) > RICH_LIMIT
    await rich_reply(bot).finish(text, [])
    sent = tg.sent_messages(USER)
    assert len(sent) >= 2 and all(m.rich for m in sent)
    assert all(len(m.text) <= RICH_LIMIT and open_fence(m.text) is None for m in sent)
    assert any(m.text.startswith("```python\n") for m in sent[1:])  # the fence reopened
    joined = "".join(
        "".join(m.text.replace("```python", "").replace("```", "").split()) for m in sent
    )
    assert joined == "".join(text.replace("```python", "").replace("```", "").split())


async def test_missing_rich_methods_switch_to_drafts_for_good(tg: FakeTelegram, bot: Bot) -> None:
    tg.disable_method("sendRichMessageDraft")
    tg.disable_method("sendRichMessage")
    support = DraftSupport(True, rich=True)
    streaming = rich_reply(bot, support)
    await streaming.update("**Раз**")
    await tg.wait_for(lambda: tg.drafts(USER))
    await streaming.finish("**Раз** два", [])
    assert support.rich is False
    assert tg.texts(USER) == ["Раз два"] and not tg.sent_messages(USER)[0].rich
    await rich_reply(bot, support).finish("Три", [])
    assert len(tg.calls("sendRichMessageDraft")) == 1 and not tg.calls("sendRichMessage")


async def test_refused_rich_message_goes_as_html_then_plain(tg: FakeTelegram, bot: Bot) -> None:
    text = "Формула $$x и **жирный**"  # an unclosed formula: Telegram refuses it
    await rich_reply(bot).finish(text, [])
    [message] = tg.sent_messages(USER)
    assert not message.rich and message.text == "Формула $$x и жирный"
    assert [e["type"] for e in message.entities] == ["bold"]
    tg.fail_next("sendRichMessage", status=400, description="Bad Request: can't parse rich x")
    tg.fail_next("sendMessage", status=400, description="Bad Request: can't parse entities: x")
    await rich_reply(bot).finish("**жирный** текст", [])
    assert tg.sent_messages(USER)[-1].text == "**жирный** текст"


async def test_a_refused_long_rich_message_is_cut_to_the_html_limit(
    tg: FakeTelegram, bot: Bot
) -> None:
    text = "$$ " + "Предложение номер один. " * 600
    await rich_reply(bot).finish(text, ["конец"])
    sent = tg.sent_messages(USER)
    assert len(sent) >= 2 and not any(m.rich for m in sent)
    assert all(len(m.text) <= MESSAGE_LIMIT for m in sent)
    assert sent[-1].text.endswith("конец")
