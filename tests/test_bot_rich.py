"""End to end: rich streamed replies with Telegram's Stop button, and their fallbacks, through
the real bot, the fake Bot API server, the tiny real model and a real SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bot_e2e import OWNER, instrument, load_model, running_bot

from bot.telegram.texts import RU
from models.runtime.chat_model import ChatModel


@pytest.fixture
async def chat_model(tiny_gguf: Path) -> AsyncIterator[ChatModel]:
    model = load_model(tiny_gguf)
    yield model
    await model.close()


async def test_reply_streams_as_rich_drafts_then_one_rich_message(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    instrument(chat_model, 0.01)
    async with running_bot(chat_model, tmp_path, use_rich_messages=True) as bot:
        bot.tg.push_message(OWNER, "Привет! Как дела?")
        await bot.wait_reply(OWNER)
        reply = (await bot.history(OWNER))[1]
        assert reply.status == "complete" and reply.text.strip()
        drafts = bot.tg.rich_drafts(OWNER)
        assert len(drafts) >= 2, "the reply was not streamed"
        assert not bot.tg.drafts(OWNER)  # no plain drafts
        calls = bot.tg.calls("sendRichMessageDraft")
        assert all(c.params["can_stop"] is True for c in calls)
        [sent] = bot.tg.sent_messages(OWNER)
        assert sent.rich and sent.text == reply.text.strip()
        assert list(reply.telegram_message_ids) == [sent.message_id]


async def test_stop_button_stops_the_reply_like_the_stop_command(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    generations = instrument(chat_model, seconds_per_token=0.1)
    async with running_bot(chat_model, tmp_path, use_rich_messages=True) as bot:
        tg = bot.tg
        tg.push_message(OWNER, "Напиши длинную сказку")
        await bot.wait(lambda: tg.rich_drafts(OWNER))
        tg.press_stop(OWNER)
        pressed_at = tg.stopped_drafts[0][2]
        await bot.wait_reply(OWNER)
        result = await generations[0].result()
        assert result.finish_reason == "cancelled" and 0 < result.n_tokens < 64
        reply = (await bot.history(OWNER))[1]
        assert reply.status == "partial" and reply.text == result.text
        assert not [d for d in tg.rich_drafts(OWNER) if d.at > pressed_at]
        [sent] = tg.sent_messages(OWNER)
        assert sent.rich
        stopped = "_" + RU.reply_stopped.replace("(", "\\(").replace(")", "\\)") + "_"
        assert sent.text == f"{reply.text.strip()}\n\n{stopped}"
        # The next message is answered as usual: the Stop applied to that one reply only.
        tg.push_message(OWNER, "Ещё")
        await bot.wait_reply(OWNER, 2)
        assert (await bot.history(OWNER))[3].status == "complete"


async def test_without_rich_methods_the_bot_falls_back_to_drafts_for_good(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path, use_rich_messages=True) as bot:
        tg = bot.tg
        tg.disable_method("sendRichMessageDraft")
        tg.disable_method("sendRichMessage")
        tg.push_message(OWNER, "Привет")
        await bot.wait_reply(OWNER)
        tg.push_message(OWNER, "Как дела?")
        await bot.wait_reply(OWNER, 2)
        replies = [r for r in await bot.history(OWNER) if r.role == "bot"]
        sent = tg.sent_messages(OWNER)
        assert [m.rich for m in sent] == [False, False]
        assert [m.text for m in sent] == [r.text.strip() for r in replies]
        assert tg.drafts(OWNER)
        assert len(tg.calls("sendRichMessageDraft")) == 1 and not tg.calls("sendRichMessage")


async def test_a_refused_rich_message_is_resent_as_html_then_plain_text(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path, use_rich_messages=True) as bot:
        tg = bot.tg
        refused = "Bad Request: can't parse rich message: unexpected end"
        tg.fail_next("sendRichMessage", status=400, description=refused)
        tg.push_message(OWNER, "Привет")
        await bot.wait_reply(OWNER)
        tg.fail_next("sendRichMessage", status=400, description=refused)
        tg.fail_next("sendMessage", status=400, description="Bad Request: can't parse entities: x")
        tg.push_message(OWNER, "Как дела?")
        await bot.wait_reply(OWNER, 2)
        replies = [r for r in await bot.history(OWNER) if r.role == "bot"]
        sent = tg.sent_messages(OWNER)
        assert [m.rich for m in sent] == [False, False]
        assert [m.text for m in sent] == [r.text.strip() for r in replies]
        html, plain = tg.calls("sendMessage")[0].params, tg.calls("sendMessage")[-1].params
        assert html["parse_mode"] == "HTML" and "parse_mode" not in plain
        # Rich messages stay on: the refusal was about those messages only.
        assert len(tg.calls("sendRichMessage")) == 2
