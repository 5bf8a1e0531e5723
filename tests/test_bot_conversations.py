"""End to end: /new and /chats, several conversations per person, through the real bot, the
fake Bot API server, the tiny real model and a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bot_e2e import (
    ADMIN,
    OWNER,
    Running,
    has_text,
    instrument,
    load_model,
    running_bot,
    seen_prompt,
)

from bot.telegram.texts import RU
from models.runtime.chat_model import ChatModel
from storage.repositories import ConversationRepository

GROUP = -100777


async def group_reply(bot: Running) -> None:
    """Until the owner's current conversation in the group holds a delivered reply."""
    for _ in range(1200):
        records = await bot.history(OWNER, GROUP)
        if any(r.role == "bot" and r.telegram_message_ids for r in records):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no reply in the group")


@pytest.fixture
async def chat_model(tiny_gguf: Path) -> AsyncIterator[ChatModel]:
    model = load_model(tiny_gguf, max_new_tokens=16)
    yield model
    await model.close()


async def test_new_chats_and_switching_back_continue_the_right_history(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    generations = instrument(chat_model)
    async with running_bot(chat_model, tmp_path) as bot:
        tg = bot.tg
        tg.push_message(OWNER, "Расскажи про кота")
        await bot.wait_reply(OWNER, 1)
        cat_reply = (await bot.history(OWNER))[1].text
        tg.push_message(OWNER, "/new")
        await bot.wait(has_text(tg, OWNER, RU.new_done))
        tg.push_message(OWNER, "Погода в Москве")
        await bot.wait_reply(OWNER, 1)
        assert "кота" not in seen_prompt(chat_model, generations[1])

        tg.push_message(OWNER, "/chats")
        [listing] = await bot.wait(
            lambda: [m for m in tg.sent_messages(OWNER) if m.text == RU.chats_title]
        )
        rows = listing.reply_markup["inline_keyboard"]  # type: ignore[index]
        labels = [row[0]["text"] for row in rows]
        assert labels[0].startswith("• Погода в Москве · ")  # the open one, latest first
        assert labels[1].startswith("Расскажи про кота · ")
        assert [row[1]["text"] for row in rows] == ["🗑", "🗑"]

        tg.press_button(OWNER, listing.message_id, text=labels[1])
        switched = RU.chats_switched.format(title="Расскажи про кота")
        await bot.wait(has_text(tg, OWNER, switched))
        tg.push_message(OWNER, "А как его зовут?")
        await bot.wait_reply(OWNER, 2)
        prompt = seen_prompt(chat_model, generations[2])
        assert "Расскажи про кота" in prompt and "А как его зовут?" in prompt
        assert cat_reply.strip()[:10] in prompt
        assert "Погода" not in prompt
        # The cat conversation's kept model state came back with it: its start was not
        # evaluated again, although the weather conversation ran in between.
        restored = (await generations[2].result()).n_prompt_restored
        assert restored >= len(generations[0].prompt)

        # Delete the weather conversation from the list; the cat one is left.
        tg.push_message(OWNER, "/chats")
        first_listing = listing.message_id
        [listing] = await bot.wait(
            lambda: [
                m
                for m in tg.sent_messages(OWNER)
                if m.text == RU.chats_title and m.message_id != first_listing
            ]
        )
        rows = listing.reply_markup["inline_keyboard"]  # type: ignore[index]
        weather = next(row for row in rows if "Погода" in row[0]["text"])
        tg.press_button(OWNER, listing.message_id, data=weather[1]["callback_data"])

        def keyboard_rows() -> int:
            return len((listing.reply_markup or {}).get("inline_keyboard", []))

        await bot.wait(lambda: keyboard_rows() == 1)
        left = listing.reply_markup["inline_keyboard"]  # type: ignore[index]
        assert "Расскажи про кота" in left[0][0]["text"]
        assert (await bot.history(OWNER))[0].text == "Расскажи про кота"


async def test_another_group_member_cannot_use_someone_elses_list(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        tg = bot.tg
        tg.push_group_message(ADMIN, GROUP, "привет всем")
        tg.push_group_message(OWNER, GROUP, "первый вопрос", mention=True)
        await group_reply(bot)
        tg.push_group_message(OWNER, GROUP, "/new")
        await bot.wait(has_text(tg, GROUP, RU.new_done))
        tg.push_group_message(OWNER, GROUP, "второй вопрос", mention=True)
        await group_reply(bot)
        tg.push_group_message(OWNER, GROUP, "/chats")
        [listing] = await bot.wait(
            lambda: [m for m in tg.sent_messages(GROUP) if m.text == RU.chats_title]
        )
        rows = listing.reply_markup["inline_keyboard"]  # type: ignore[index]
        tg.press_button(GROUP, listing.message_id, data=rows[1][1]["callback_data"], user_id=ADMIN)
        refusal = await bot.wait(
            lambda: [c for c in tg.calls("answerCallbackQuery") if c.params.get("text")]
        )
        assert refusal[0].params["text"] == RU.chats_not_yours
        history = await bot.history(OWNER, GROUP)
        assert history[0].text == "второй вопрос"
        async with bot.sessions() as session:
            assert len(await ConversationRepository(session).recent(OWNER, GROUP, 10)) == 2
