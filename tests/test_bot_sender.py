"""Every Bot API call goes through one sender (bot/telegram/sender.py): 429s are waited out,
command answers included, and each chat is paced to Telegram's limits, with one typing
indicator per chat however many replies are waiting."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import TelegramRetryAfter
from bot_e2e import OWNER, has_text, instrument, running_bot
from fake_telegram import Call, FakeTelegram

from bot.telegram.sender import TelegramSender
from bot.telegram.texts import RU
from models.runtime.chat_model import ChatModel

GROUP = -100777
GROUP_USERS = (1001, 4001, 4002, 4003)  # the owner and three friends allowed by id
MESSAGES = ("sendMessage", "editMessageText")


def in_chat(calls: list[Call], chat_id: int) -> list[Call]:
    return [c for c in calls if c.params.get("chat_id") == chat_id]


async def test_a_command_answer_hit_by_429_is_sent_again(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.fail_next("sendMessage", retry_after=1)
        bot.tg.push_message(OWNER, "/help")
        await bot.wait(has_text(bot.tg, OWNER, RU.help))
        sends = bot.tg.calls("sendMessage")
        assert [c.status for c in sends] == [429, 200]
        assert sends[0].params["text"] == sends[1].params["text"]  # the same answer, again


async def test_four_users_in_a_group_keep_to_the_chats_flood_limits(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    instrument(chat_model, seconds_per_token=0.02)
    allowed = [str(user) for user in GROUP_USERS]
    async with running_bot(chat_model, tmp_path, allowed_users=allowed) as bot:
        # Telegram's limits, enforced by the fake server: 1 a second, 20 a minute in a group.
        bot.tg.set_flood_limit(1, methods=MESSAGES, group_per_minute=20)
        for user in GROUP_USERS:
            bot.tg.push_group_message(user, GROUP, f"Вопрос от {user}", mention=True)
        for user in GROUP_USERS:
            await bot.wait(lambda u=user: bot.tg.texts(u) or len(bot.tg.texts(GROUP)) >= 4)
        await bot.wait(lambda: len(bot.tg.texts(GROUP)) >= len(GROUP_USERS), within=120)
        assert bot.tg.flood_refusals == []
        calls = [c for c in in_chat(bot.tg.calls(), GROUP) if c.method in MESSAGES]
        assert len(calls) >= len(GROUP_USERS)
        # Spacing seen by the server; 0.1 s of room for the loopback's jitter.
        gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
        assert min(gaps) >= 0.9, gaps
        actions = in_chat(bot.tg.calls("sendChatAction"), GROUP)
        assert actions, "nobody saw that the bot is typing"
        # One typing indicator for the chat, not one per waiting reply.
        assert all(b.at - a.at >= 0.9 for a, b in itertools.pairwise(actions))


async def test_a_flood_of_queued_messages_shows_one_typing_indicator(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_burst([OWNER], 10)  # each queued reply runs its own typing loop
        await bot.wait_reply(OWNER, 10, within=120)
        actions = bot.tg.calls("sendChatAction")
        assert actions
        assert all(b.at - a.at >= 0.9 for a, b in itertools.pairwise(actions))
        sends = [c for c in bot.tg.calls("sendMessage") if c.status == 200]
        assert all(b.at - a.at >= 0.9 for a, b in itertools.pairwise(sends))


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        server.push_message(OWNER, "привет")
        server.push_group_message(OWNER, GROUP, "всем привет")
        yield server


def sending_bot(tg: FakeTelegram, sender: TelegramSender) -> Bot:
    session = AiohttpSession(api=tg.api_server())
    session.middleware(sender)
    return Bot(tg.token, session=session)


async def test_the_group_minute_limit_queues_messages_in_order(tg: FakeTelegram) -> None:
    # The minute shortened to 1.5 s so that the test does not take minutes.
    tg.set_flood_limit(None, group_per_minute=3, minute=1.5)
    bot = sending_bot(tg, TelegramSender(message_interval=0.05, group_per_minute=3, minute=1.5))
    try:
        for n in range(7):
            await bot.send_message(GROUP, f"сообщение {n}")
        await bot.send_message(OWNER, "в личном чате нет минутного лимита")
    finally:
        await bot.session.close()
    assert tg.flood_refusals == []
    assert tg.texts(GROUP) == [f"сообщение {n}" for n in range(7)]
    sends = [c.at for c in in_chat(tg.calls("sendMessage"), GROUP)]
    assert sends[3] - sends[0] >= 1.4 and sends[6] - sends[3] >= 1.4


async def test_a_wait_longer_than_the_patience_is_handed_to_the_caller(tg: FakeTelegram) -> None:
    bot = sending_bot(tg, TelegramSender(patience=5.0))
    try:
        tg.fail_next("sendMessage", retry_after=30)
        with pytest.raises(TelegramRetryAfter):
            await bot.send_message(OWNER, "не дождётся")
        tg.fail_next("sendMessage", retry_after=1)
        await bot.send_message(OWNER, "дождётся")
    finally:
        await bot.session.close()
    assert tg.texts(OWNER) == ["дождётся"]


async def test_lone_surrogates_go_out_as_replacement_marks(tg: FakeTelegram) -> None:
    bot = sending_bot(tg, TelegramSender())
    try:
        sent = await bot.send_message(OWNER, "<b>a\ud800b</b> 😀", parse_mode="HTML")
    finally:
        await bot.session.close()
    assert tg.texts(OWNER) == ["a\ufffdb 😀"]
    assert sent.entities is not None and sent.entities[0].length == 3  # UTF-16 length kept


async def test_a_draft_refused_with_429_is_not_sent_stale_but_the_chat_waits(
    tg: FakeTelegram,
) -> None:
    bot = sending_bot(tg, TelegramSender())
    try:
        tg.fail_next("sendMessageDraft", retry_after=1)
        with pytest.raises(TelegramRetryAfter):
            await bot.send_message_draft(OWNER, draft_id=7, text="устаревший черновик")
        await bot.send_message(OWNER, "готовый ответ")
    finally:
        await bot.session.close()
    (draft,) = tg.calls("sendMessageDraft")
    assert draft.status == 429 and tg.drafts(OWNER) == []
    # The message waited out the chat's penalty (1 s; 0.1 s of room for the loopback).
    (send,) = tg.calls("sendMessage")
    assert send.status == 200 and send.at - draft.at >= 0.9
    assert tg.texts(OWNER) == ["готовый ответ"]
