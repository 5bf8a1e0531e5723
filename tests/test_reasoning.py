"""Reasoning models: `<think>…</think>` is shown only in a rich draft's thinking block, never
stored as the reply and never fed back into a later prompt."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.methods import SendMessage, SendMessageDraft
from fake_model import FakeChatModel, FakeEngine
from fake_telegram import FakeTelegram
from mocked_bot import text_update
from test_fast_tier import fast_bot

from bot.core.reasoning import answer_of, split_reasoning
from bot.telegram.delivery import ChatTarget, DraftSupport
from bot.telegram.reply import TelegramReply
from bot.telegram.texts import RU

USER = 1001


def test_split_reasoning() -> None:
    assert split_reasoning("<think>план</think>\n\nОтвет") == ("план", "Ответ")
    assert split_reasoning("  <think>ещё думаю") == ("ещё думаю", "")
    # The template opened the block in the prompt: only its end is written.
    assert split_reasoning("план</think>Ответ") == ("план", "Ответ")
    assert split_reasoning("Просто ответ") == ("", "Просто ответ")
    # A tag quoted inside an answer is not reasoning.
    assert answer_of("Тег <think> пишут так: <think>x</think>") == (
        "Тег <think> пишут так: <think>x</think>"
    )


async def test_reasoning_is_not_stored_nor_shown_nor_fed_back(tmp_path: Path) -> None:
    model = FakeChatModel(engine=FakeEngine(thinking="секретный план"))
    async with fast_bot(tmp_path, model) as fast:
        await fast.feed(text_update(USER, "привет"))
        await fast.feed(text_update(USER, "ещё"))
        stored = [r.text for r in await fast.history(USER) if r.role == "bot"]
        assert stored == ["echo: привет", "echo: ещё"]
        assert fast.bot.recorder.texts(USER) == stored  # shown exactly as stored
        shown = [
            m.text
            for m in fast.bot.recorder.requests
            if isinstance(m, SendMessage | SendMessageDraft)
        ]
        assert not [text for text in shown if "план" in text]
        # The second prompt holds the first answer and not the reasoning before it.
        assert [m.content for m in model.prompts[1]] == ["привет", "echo: привет", "ещё"]


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


async def test_rich_draft_shows_reasoning_in_a_thinking_block(tg: FakeTelegram, bot: Bot) -> None:
    support = DraftSupport(True, rich=True)
    reply = TelegramReply(bot, ChatTarget(USER), drafts=support, interval=0.05, texts=RU)
    async with reply:
        await reply.update("<think>думаю <b>")
        await tg.wait_for(lambda: tg.rich_drafts(USER))
        await reply.update("<think>думаю <b></think>**Ответ**")
        await tg.wait_for(lambda: len(tg.rich_drafts(USER)) == 2)
        await reply.finish("**Ответ**", [])
    first, second = (c.params["rich_message"] for c in tg.calls("sendRichMessageDraft"))
    assert first == {"html": "<tg-thinking>думаю &lt;b&gt;</tg-thinking>"}
    assert second == {"html": "<tg-thinking>думаю &lt;b&gt;</tg-thinking><b>Ответ</b>"}
    [message] = tg.sent_messages(USER)
    assert message.rich and message.text == "**Ответ**"
