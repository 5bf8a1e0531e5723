"""End to end: the 🔄 button under a reply gives another answer to the same question."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bot_e2e import ADMIN, OWNER, instrument, load_model, running_bot, seen_prompt
from test_bot_conversations import GROUP, group_reply

from bot.telegram.texts import RU
from models.runtime.chat_model import ChatModel


@pytest.fixture
async def chat_model(tiny_gguf: Path) -> AsyncIterator[ChatModel]:
    model = load_model(tiny_gguf, max_new_tokens=16)
    yield model
    await model.close()


def alerts(bot_calls: list) -> list[str]:  # type: ignore[type-arg]
    return [c.params["text"] for c in bot_calls if c.params.get("text")]


async def test_regenerate_replaces_the_last_reply_and_refuses_an_older_one(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    generations = instrument(chat_model)
    async with running_bot(chat_model, tmp_path) as bot:
        tg = bot.tg
        tg.push_message(OWNER, "Первый вопрос")
        await bot.wait_reply(OWNER, 1)
        tg.push_message(OWNER, "Второй вопрос")
        await bot.wait_reply(OWNER, 2)
        first, second = tg.sent_messages(OWNER)
        assert second.reply_markup is not None
        assert second.reply_markup["inline_keyboard"][0][0]["text"] == RU.regenerate_button

        # The older reply cannot be regenerated: it would cut the conversation.
        tg.press_button(OWNER, first.message_id, text=RU.regenerate_button)
        refused = await bot.wait(lambda: alerts(tg.calls("answerCallbackQuery")))
        assert refused == [RU.regenerate_only_last]

        old = (await bot.history(OWNER))[3]
        tg.press_button(OWNER, second.message_id, text=RU.regenerate_button)
        await bot.wait(lambda: len(tg.sent_messages(OWNER)) == 3)
        await bot.wait_reply(OWNER, 3)
        history = await bot.history(OWNER)
        assert [(r.role, r.status) for r in history] == [
            ("user", "complete"),
            ("bot", "complete"),
            ("user", "complete"),
            ("bot", "replaced"),
            ("bot", "complete"),
        ]
        assert history[3].id == old.id and history[3].text == old.text
        # The new answer saw the question again, not the reply it replaces.
        prompt = seen_prompt(chat_model, generations[2])
        assert prompt.count("Второй вопрос") == 1 and "Первый вопрос" in prompt
        assert old.text.strip() not in prompt
        assert tg.sent_messages(OWNER)[-1].text == history[4].text.strip()
        assert tg.sent_messages(OWNER)[1].reply_markup is None  # the old button is gone

        # A follow-up sees the new answer and never the replaced one.
        tg.push_message(OWNER, "Третий")
        await bot.wait_reply(OWNER, 4)
        follow_up = seen_prompt(chat_model, generations[3])
        assert history[4].text.strip()[:10] in follow_up
        # Two earlier replies and the one being written: the replaced one is not among them
        # (greedy sampling writes the same words again, so count the turns).
        assert follow_up.count("<s>bot") == 3


async def test_another_group_member_cannot_regenerate(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        tg = bot.tg
        tg.push_group_message(ADMIN, GROUP, "привет всем")
        tg.push_group_message(OWNER, GROUP, "вопрос", mention=True)
        await group_reply(bot)
        [reply] = [m for m in tg.sent_messages(GROUP) if m.reply_markup]
        tg.press_button(GROUP, reply.message_id, text=RU.regenerate_button, user_id=ADMIN)
        refused = await bot.wait(lambda: alerts(tg.calls("answerCallbackQuery")))
        assert refused == [RU.regenerate_not_yours]
        assert [r.status for r in await bot.history(OWNER, GROUP)] == ["complete", "complete"]
