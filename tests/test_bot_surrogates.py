"""Lone UTF-16 surrogates from Telegram: the storage keeps them exactly, so every other part of
the bot must take them too (window, templates, state cache, Telegram side)."""

from __future__ import annotations

from pathlib import Path

from bot_e2e import OWNER, has_text, running_bot

from bot.telegram.texts import RU
from models.runtime.chat_model import ChatModel

GROUP = -100777


async def test_a_lone_surrogate_is_kept_answered_and_shown_as_a_replacement_mark(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_message(OWNER, "Привет \ud800 мир")
        await bot.wait_reply(OWNER)
        bot.tg.push_message(OWNER, "Ещё \udc00 раз")  # the window now replays the first turn
        await bot.wait_reply(OWNER, 2)
        bot.tg.push_message(OWNER, "/system Ты \ud800 домовой")
        await bot.wait(has_text(bot.tg, OWNER, RU.system_set))
        assert await bot.system_prompt(OWNER) == "Ты \ud800 домовой"
        bot.tg.push_message(OWNER, "/system")
        shown = RU.system_current.format(prompt="Ты \ufffd домовой")
        await bot.wait(lambda: shown in bot.tg.texts(OWNER))
        bot.tg.push_message(OWNER, "И снова")  # with that system prompt in the window
        await bot.wait_reply(OWNER, 3)
        history = await bot.history(OWNER)
        assert [r.text for r in history if r.role == "user"] == [
            "Привет \ud800 мир",
            "Ещё \udc00 раз",
            "И снова",
        ]
        assert [r.status for r in history] == ["complete"] * 6
        assert not [c for c in bot.tg.calls() if c.status >= 400]


async def test_a_group_mention_with_a_lone_surrogate_is_answered(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_group_message(OWNER, GROUP, "что это \ud800?", mention=True)
        # The mention is found in a text with a lone surrogate, so the bot answers.
        await bot.wait(lambda: bot.tg.texts(GROUP))
        records = await bot.history(OWNER, GROUP)
        assert records[0].text == "что это \ud800?"
