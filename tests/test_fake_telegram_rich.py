"""The fake Bot API server's rich messages and Stop button, spoken to by a real aiogram Bot."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import TelegramBadRequest, TelegramNotFound
from aiogram.types import InputRichMessage, Update
from fake_telegram import FakeTelegram
from fake_telegram_rich import RICH_LIMIT

USER = 42
GROUP = -1001234567890


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    bot = Bot(tg.token, session=AiohttpSession(api=tg.api_server()))
    tg.push_message(USER, "привет")
    yield bot
    await bot.session.close()


async def test_rich_draft_then_message_renders_blocks(bot: Bot, tg: FakeTelegram) -> None:
    draft = InputRichMessage(markdown="**Ответ**")
    assert await bot.send_rich_message_draft(USER, 7, draft, can_stop=True) is True
    final = "**Ответ**\n\n```python\nprint(1)\n```\n\n| a | b |"
    message = await bot.send_rich_message(USER, InputRichMessage(markdown=final))
    assert message.rich_message is not None
    kinds = [block.type for block in message.rich_message.blocks]
    assert kinds == ["paragraph", "pre", "paragraph"]
    assert [(e.draft_id, e.text) for e in tg.rich_drafts(USER)] == [(7, "**Ответ**")]
    sent = tg.sent_messages(USER)[-1]
    assert (sent.rich, sent.text) == (True, final)
    # Sending the message ended the draft: its Stop button is gone.
    with pytest.raises(LookupError):
        tg.press_stop(USER)


async def test_stop_button_queues_the_update(bot: Bot, tg: FakeTelegram) -> None:
    rich = InputRichMessage(markdown="Дума")
    await bot.send_rich_message_draft(USER, 9, rich, can_stop=True, keep_on_stop=True)
    pushed = tg.press_stop(USER)
    update = Update.model_validate(pushed)
    stopped = update.stopped_message_generation
    assert stopped is not None
    assert (stopped.chat.id, stopped.draft_id) == (USER, 9)
    assert tg.stopped_drafts[0][:2] == (USER, 9)
    with pytest.raises(LookupError):  # pressed once, the button is gone
        tg.press_stop(USER)


async def test_rich_errors_and_limits(bot: Bot, tg: FakeTelegram) -> None:
    with pytest.raises(TelegramBadRequest, match="RICH_MESSAGE_TOO_LONG"):
        await bot.send_rich_message(USER, InputRichMessage(markdown="я" * (RICH_LIMIT + 1)))
    assert await bot.send_rich_message(USER, InputRichMessage(markdown="я" * RICH_LIMIT))
    with pytest.raises(TelegramBadRequest, match="can't parse rich message"):
        await bot.send_rich_message(USER, InputRichMessage(markdown="$$x"))
    with pytest.raises(TelegramBadRequest, match="exactly one of"):
        await bot.send_rich_message(USER, InputRichMessage(markdown="a", html="<p>a</p>"))
    with pytest.raises(TelegramBadRequest, match="empty"):
        await bot.send_rich_message(USER, InputRichMessage(markdown="  "))
    with pytest.raises(TelegramBadRequest, match="draft_id"):
        await bot.send_rich_message_draft(USER, 0, InputRichMessage(markdown="a"))
    thinking = InputRichMessage(html="<tg-thinking>hm</tg-thinking>")
    assert await bot.send_rich_message_draft(USER, 3, thinking)
    with pytest.raises(TelegramBadRequest, match="thinking"):
        await bot.send_rich_message(USER, thinking)
    tg.push_group_message(7, GROUP, "привет", mention=True)
    with pytest.raises(TelegramBadRequest, match="TEXTDRAFT_PEER_INVALID"):
        await bot.send_rich_message_draft(GROUP, 1, InputRichMessage(markdown="a"))
    assert await bot.send_rich_message(GROUP, InputRichMessage(markdown="в группе"))


async def test_rich_methods_can_be_missing(bot: Bot, tg: FakeTelegram) -> None:
    tg.disable_method("sendRichMessageDraft")
    tg.disable_method("sendRichMessage")
    with pytest.raises(TelegramNotFound):
        await bot.send_rich_message_draft(USER, 1, InputRichMessage(markdown="a"))
    with pytest.raises(TelegramNotFound):
        await bot.send_rich_message(USER, InputRichMessage(markdown="a"))
