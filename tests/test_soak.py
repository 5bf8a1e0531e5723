"""A soak test through the fake Bot API server: 10 users, 300 messages in bursts, 429s (on
messages and drafts) and a 502 outage injected, a graceful restart (what SIGTERM does) in the
middle. Afterwards every message is stored once, in order, and answered once, in order."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from bot_e2e import instrument, load_model, running_bot
from fake_telegram import FakeTelegram

from bot.telegram.texts import RU
from models.runtime.chat_model import ChatModel
from storage.repositories import ConversationRepository, MessageRepository

USERS = list(range(3001, 3011))
BURSTS = 20  # of 15 messages each, 10 bursts before the restart and 10 after


@pytest.fixture
async def short_model(tiny_gguf: Path) -> ChatModel:
    model = load_model(tiny_gguf, max_new_tokens=6)
    yield model  # type: ignore[misc]
    await model.close()


async def push_bursts(tg: FakeTelegram, first: int, last: int, sent: dict[int, list[str]]) -> None:
    for burst in range(first, last):
        for index in range(15):
            user = USERS[(burst * 15 + index) % len(USERS)]
            text = f"сообщение {len(sent[user])} от {user}"
            sent[user].append(text)
            tg.push_message(user, text)
        if burst % 5 == 1:
            tg.fail_next("sendMessage", status=429, retry_after=1, count=2)
        if burst % 5 == 3:
            tg.fail_next("sendMessageDraft", status=429, retry_after=1, count=2)
        if burst == 6:
            tg.outage(1.5)
        await asyncio.sleep(0.3)


async def test_soak_with_faults_and_a_restart(short_model: ChatModel, tmp_path: Path) -> None:
    sent: dict[int, list[str]] = {user: [] for user in USERS}
    users = [str(user) for user in USERS]
    # Slow enough that replies queue up: the restart always finds work in progress.
    generations = instrument(short_model, seconds_per_token=0.02)
    async with FakeTelegram() as tg:
        async with running_bot(short_model, tmp_path, tg=tg, allowed_users=users) as bot:
            await push_bursts(tg, 0, BURSTS // 2, sent)
        # The restart: whatever was fetched is answered or kept for the next start, and
        # Telegram re-sends the updates the stopped run had not confirmed.
        async with running_bot(short_model, tmp_path, tg=tg, allowed_users=users) as bot:
            await push_bursts(tg, BURSTS // 2, BURSTS, sent)

            async def everything_answered() -> bool:
                async with bot.sessions() as session:
                    for user in USERS:
                        conversation = await ConversationRepository(session).current(user, user)
                        history = await MessageRepository(session).history(conversation.id)
                        turns = [r for r in history if r.role == "user"]
                        if len(turns) < len(sent[user]) or any(
                            r.status == "pending" for r in history
                        ):
                            return False
                        delivered = [
                            r for r in history if r.role == "bot" and r.telegram_message_ids
                        ]
                        if len(delivered) < len(turns):
                            return False
                return True

            deadline = asyncio.get_running_loop().time() + 240
            while not await everything_answered():
                if asyncio.get_running_loop().time() > deadline:
                    counts = {}
                    for user in USERS:
                        history = await bot.history(user)
                        delivered = [
                            r for r in history if r.role == "bot" and r.telegram_message_ids
                        ]
                        pending = [r for r in history if r.status == "pending"]
                        lost = [
                            (r.status, bool(r.text))
                            for r in history
                            if r.role == "bot" and not r.telegram_message_ids
                        ]
                        counts[user] = (len(sent[user]), len(delivered), len(pending), lost)
                    raise AssertionError(
                        f"not all answered in time (sent, answered, pending): {counts}"
                    )
                await asyncio.sleep(0.5)
            for user in USERS:
                history = await bot.history(user)
                # Stored once each, in the order they were sent.
                assert [r.text for r in history if r.role == "user"] == sent[user]
                # One delivered answer per message; a reply row the shutdown left empty is
                # kept, undelivered, and the message was answered after the restart.
                delivered = [r for r in history if r.role == "bot" and r.telegram_message_ids]
                assert len(delivered) == len(sent[user]), user
                assert all(r.status in ("complete", "partial") for r in delivered)
                assert all(r.status == "complete" for r in history if r.role == "user")
            # Answered in order: the messages each prompt answers, per user, are the messages
            # sent (a reply the shutdown cancelled before its first word is asked again after).
            answered: dict[int, list[str]] = {user: [] for user in USERS}
            for generation in generations:
                prompt = short_model.tokenizer.decode(generation.prompt, special=True)
                asked = re.findall(r"сообщение \d+ от (\d+)", prompt)
                last = re.findall(r"сообщение \d+ от \d+", prompt)[-1]
                user = int(asked[-1])
                if not answered[user] or answered[user][-1] != last:
                    answered[user].append(last)
            assert answered == sent
            # The restart did cut into the work: some were told they would be answered after it.
            told = [t for user in USERS for t in tg.texts(user) if RU.answer_after_restart in t]
            assert told
