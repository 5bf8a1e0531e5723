"""End to end: the real bot, polling a fake Bot API server, answering with the tiny real model
and keeping the conversation in a real SQLite file."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bot_e2e import (
    ADMIN,
    OWNER,
    STRANGER,
    has_text,
    instrument,
    load_model,
    running_bot,
    seen_prompt,
)

from bot.telegram.texts import EN, RU
from models.prompt.templates import ChatMessage
from models.runtime.chat_model import ChatModel
from storage.repositories import StatsRepository, UserRepository


@pytest.fixture
async def chat_model(tiny_gguf: Path) -> AsyncIterator[ChatModel]:
    model = load_model(tiny_gguf)
    yield model
    await model.close()


async def test_start_greets_in_russian_and_registers_commands(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_message(OWNER, "/start")
        texts = await bot.wait(lambda: bot.tg.texts(OWNER))
        assert texts == [RU.start]
        ru = [c["command"] for c in bot.tg.my_commands()]
        en = bot.tg.my_commands(language_code="en")
        # /new and /chats joined the menu with several conversations per person (issue 13).
        assert ru == ["start", "help", "new", "chats", "reset", "system", "stop", "forget"]
        assert [c["description"] for c in en] == [d for _, d in EN.commands]
        admin_menu = bot.tg.my_commands(scope={"type": "chat", "chat_id": ADMIN})
        assert admin_menu[-1] == {"command": "status", "description": RU.status_command}


async def test_english_user_gets_english_texts(chat_model: ChatModel, tmp_path: Path) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_message(OWNER, "/help", language_code="en-GB")
        assert await bot.wait(lambda: bot.tg.texts(OWNER)) == [EN.help]


async def test_message_streams_as_drafts_then_one_final_message(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    instrument(chat_model, 0.01)
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_message(OWNER, "Привет! Как дела?")
        await bot.wait_reply(OWNER)
        await bot.wait(lambda: bot.tg.texts(OWNER))
        history = await bot.history(OWNER)
        assert [r.role for r in history] == ["user", "bot"]
        reply = history[1]
        assert reply.status == "complete" and reply.text.strip()
        assert reply.n_tokens and reply.model == chat_model.name
        drafts = bot.tg.drafts(OWNER)
        assert len(drafts) >= 2, "the reply was not streamed"
        # Drafts grow towards the final text; no draft repeats the previous one.
        assert all(a.text != b.text for a, b in itertools.pairwise(drafts))
        sent = bot.tg.sent_messages(OWNER)
        assert len(sent) == 1 and not bot.tg.edits(OWNER)
        assert sent[0].text == reply.text.strip()
        assert list(reply.telegram_message_ids) == [sent[0].message_id]
        actions = [e for e in bot.tg.transcript(OWNER) if e.kind == "action"]
        assert actions and actions[0].at <= drafts[0].at


async def test_follow_up_sees_history_and_reset_starts_fresh(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    generations = instrument(chat_model)
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_message(OWNER, "Расскажи про кота")
        await bot.wait_reply(OWNER, 1)
        bot.tg.push_message(OWNER, "А про лису?")
        await bot.wait_reply(OWNER, 2)
        first_reply = (await bot.history(OWNER))[1].text
        follow_up = seen_prompt(chat_model, generations[1])
        assert "Расскажи про кота" in follow_up and "А про лису?" in follow_up
        assert first_reply.strip()[:20] in follow_up

        bot.tg.push_message(OWNER, "/reset")
        await bot.wait(has_text(bot.tg, OWNER, RU.reset_done))
        bot.tg.push_message(OWNER, "Новая тема: погода")
        await bot.wait_reply(OWNER, 1)
        fresh = seen_prompt(chat_model, generations[2])
        assert "Новая тема: погода" in fresh
        assert "кота" not in fresh and "лису" not in fresh
        assert (
            generations[2].prompt
            == chat_model.build_prompt(
                chat_model.default_system_prompt,
                [ChatMessage("user", "Новая тема: погода")],
            ).tokens
        )
        assert [r.role for r in await bot.history(OWNER)] == ["user", "bot"]
        async with bot.sessions() as session:
            totals = await StatsRepository(session).totals()
        assert totals.conversations == 2 and totals.messages == 6  # the old one is kept


async def test_system_prompt_changes_the_next_prompt(chat_model: ChatModel, tmp_path: Path) -> None:
    generations = instrument(chat_model)
    default = chat_model.default_system_prompt
    assert default
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_message(OWNER, "/system")
        await bot.wait(has_text(bot.tg, OWNER, default))
        bot.tg.push_message(OWNER, "/system Ты — кот Матроскин, отвечай кратко.")
        await bot.wait(has_text(bot.tg, OWNER, RU.system_set))
        assert await bot.system_prompt(OWNER) == "Ты — кот Матроскин, отвечай кратко."
        bot.tg.push_message(OWNER, "Кто ты?")
        await bot.wait_reply(OWNER, 1)
        prompt = seen_prompt(chat_model, generations[0])
        assert prompt.startswith("<s>system\nТы — кот Матроскин, отвечай кратко.</s>")
        assert default not in prompt

        too_long = "слово " * 3000
        bot.tg.push_message(OWNER, f"/system {too_long}")
        await bot.wait(has_text(bot.tg, OWNER, RU.system_too_long.split("(")[0].strip()))
        assert await bot.system_prompt(OWNER) == "Ты — кот Матроскин, отвечай кратко."

        bot.tg.push_message(OWNER, "/system reset")
        await bot.wait(has_text(bot.tg, OWNER, RU.system_reset_done))
        bot.tg.push_message(OWNER, "А теперь?")
        await bot.wait_reply(OWNER, 2)
        assert seen_prompt(chat_model, generations[1]).startswith(f"<s>system\n{default}</s>")


async def test_stop_mid_reply_keeps_the_partial_text(chat_model: ChatModel, tmp_path: Path) -> None:
    generations = instrument(chat_model, seconds_per_token=0.1)
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_message(OWNER, "Напиши длинную сказку")
        await bot.wait(lambda: bot.tg.drafts(OWNER))
        bot.tg.push_message(OWNER, "/stop")
        await bot.wait_reply(OWNER)
        result = await generations[0].result()
        assert result.finish_reason == "cancelled" and 0 < result.n_tokens < 64
        reply = (await bot.history(OWNER))[1]
        assert reply.status == "partial" and reply.text == result.text
        await bot.wait(has_text(bot.tg, OWNER, RU.stop_done))
        final = await bot.wait(lambda: [t for t in bot.tg.texts(OWNER) if RU.reply_stopped in t])
        assert final[0].startswith(reply.text.strip())
        bot.tg.push_message(OWNER, "/stop")
        await bot.wait(has_text(bot.tg, OWNER, RU.stop_nothing))


async def test_user_message_is_stored_before_generation_and_queue_is_shown(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    generations = instrument(chat_model, seconds_per_token=0.05)
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_message(OWNER, "Первый, долгий ответ")
        await bot.wait(lambda: bot.tg.drafts(OWNER))
        bot.tg.push_message(ADMIN, "Второй в очереди")
        queued = RU.queue_position.format(ahead=1)
        await bot.wait(lambda: any(d.text == queued for d in bot.tg.drafts(ADMIN)))
        # The engine has not started the admin's request, yet the message is committed.
        assert generations[1].position == 2 and not generations[1].started.is_set()
        stored = await bot.history(ADMIN)
        assert [(r.role, r.text, r.status) for r in stored] == [
            ("user", "Второй в очереди", "complete"),
            ("bot", "", "pending"),
        ]
        bot.tg.push_message(OWNER, "/status")  # not an admin: no statistics
        await bot.wait(has_text(bot.tg, OWNER, RU.help))
        bot.tg.push_message(ADMIN, "/status")
        status = await bot.wait(lambda: [t for t in bot.tg.texts(ADMIN) if t.startswith("Модель:")])
        assert chat_model.name in status[0] and "В очереди: 2" in status[0]
        await bot.wait_reply(ADMIN, within=30)
        assert (await bot.history(ADMIN))[1].status == "complete"
        # Once its turn comes, the stale queue place gives way before the reply appears.
        drafts = [d.text for d in bot.tg.drafts(ADMIN)]
        assert drafts[:2] == [queued, RU.queue_your_turn], drafts[:3]


async def test_stranger_is_refused_with_their_id(chat_model: ChatModel, tmp_path: Path) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_message(STRANGER, "Привет, бот")
        await bot.wait(lambda: bot.tg.texts(STRANGER))
        assert bot.tg.texts(STRANGER) == [RU.access_closed.format(user_id=STRANGER)]
        assert str(STRANGER) in bot.tg.texts(STRANGER)[0]
        bot.tg.push_message(4242, "/start", username="Friend_By_Name")  # allowed by @username
        await bot.wait(has_text(bot.tg, 4242, RU.start))
        async with bot.sessions() as session:
            assert await UserRepository(session).get(STRANGER) is None
            assert await UserRepository(session).get(4242) is not None


async def test_forgotten_start_and_truncated_message_are_said_once(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    generations = instrument(chat_model)
    long_turn = "Домовой живёт в доме и помогает хозяевам. " * 70
    async with running_bot(chat_model, tmp_path) as bot:
        for count in (1, 2, 3):
            bot.tg.push_message(OWNER, f"{count}: {long_turn}")
            await bot.wait_reply(OWNER, count)
        await bot.wait(lambda: len(bot.tg.sent_messages(OWNER)) == 3)
        assert "1: " not in seen_prompt(chat_model, generations[2])  # the window slid
        finals = [m.text for m in bot.tg.sent_messages(OWNER)]
        assert sum(RU.forgotten_start in text for text in finals) == 1
        assert RU.forgotten_start not in finals[0]
        stored = [r.text for r in await bot.history(OWNER) if r.role == "bot"]
        assert all(RU.forgotten_start not in text for text in stored)

        bot.tg.push_message(OWNER, "слово " * 3000)  # alone longer than the window
        await bot.wait_reply(OWNER, 4)
        await bot.wait(has_text(bot.tg, OWNER, RU.truncated_message))


async def test_without_allowed_users_only_admins_are_served(
    chat_model: ChatModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.telegram.access")
    async with running_bot(chat_model, tmp_path, allowed_users=[]) as bot:
        assert "only the 1 admin entries are served" in caplog.text
        bot.tg.push_message(OWNER, "/start")
        bot.tg.push_message(ADMIN, "/start")
        await bot.wait(lambda: bot.tg.texts(OWNER) and bot.tg.texts(ADMIN))
        assert bot.tg.texts(OWNER) == [RU.access_closed.format(user_id=OWNER)]
        assert bot.tg.texts(ADMIN) == [RU.start]


async def test_stop_also_cancels_a_reply_still_waiting_its_turn(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    generations = instrument(chat_model, seconds_per_token=0.1)
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_message(OWNER, "Первое")
        await bot.wait(lambda: bot.tg.drafts(OWNER))
        bot.tg.push_message(OWNER, "Второе, вдогонку")
        await bot.wait(lambda: len([r for r in bot.tg.calls("sendChatAction")]) >= 2)
        bot.tg.push_message(OWNER, "/stop")
        await bot.wait_reply(OWNER)
        await bot.wait(has_text(bot.tg, OWNER, RU.stop_done))
        # Every reply has ended: a reply to the second message could only have come before.
        await bot.wait(lambda: bot.app.services.chat.idle)
        history = await bot.history(OWNER)
        assert [(r.role, r.text, r.status) for r in history][2] == (
            "user",
            "Второе, вдогонку",
            "complete",
        )
        assert [r.role for r in history] == ["user", "bot", "user"]
        assert history[1].status == "partial"
        assert len(generations) == 1  # the second never reached the model


async def test_commands_answer_at_once_while_another_user_is_answered(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    instrument(chat_model, seconds_per_token=0.1)  # the admin's reply takes about 6 s
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_message(OWNER, "Привет")
        await bot.wait_reply(OWNER)
        bot.tg.push_message(ADMIN, "Напиши длинный ответ")
        await bot.wait(lambda: bot.tg.drafts(ADMIN))
        for command, answer in (
            ("/reset", RU.reset_done),
            ("/system Ты — кот.", RU.system_set),
            ("/forget", RU.forget_confirm),
        ):
            bot.tg.push_message(OWNER, command)
            await bot.wait(has_text(bot.tg, OWNER, answer), within=2.0)
        question = [m for m in bot.tg.sent_messages(OWNER) if m.text == RU.forget_confirm]
        bot.tg.press_button(OWNER, question[0].message_id, text=RU.forget_yes)
        await bot.wait(has_text(bot.tg, OWNER, RU.forget_done), within=2.0)
        assert not bot.tg.sent_messages(ADMIN), "the admin's reply was still being written"
        await bot.wait_reply(ADMIN)
