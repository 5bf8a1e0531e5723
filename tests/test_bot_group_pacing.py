"""End to end: a streamed reply in a group keeps GROUP_EDIT_INTERVAL between its edits, sends
no edit that changes nothing, waits out a 429 and always delivers the final text."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bot_e2e import ADMIN, OWNER, instrument, load_model, running_bot
from test_bot_conversations import GROUP, group_reply

from models.runtime.chat_model import ChatModel

INTERVAL = 1.5


@pytest.fixture
async def chat_model(tiny_gguf: Path) -> AsyncIterator[ChatModel]:
    model = load_model(tiny_gguf, max_new_tokens=48)
    yield model
    await model.close()


async def test_group_edits_are_paced_and_the_final_text_arrives_under_429s(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    instrument(chat_model, seconds_per_token=0.1)  # about five seconds of streaming
    async with running_bot(chat_model, tmp_path, group_edit_interval=INTERVAL) as bot:
        tg = bot.tg
        tg.push_group_message(ADMIN, GROUP, "привет всем")
        tg.fail_next("editMessageText", status=429, retry_after=1, count=2)
        tg.push_group_message(OWNER, GROUP, "расскажи длинную историю", mention=True)
        await group_reply(bot)
        reply = next(r for r in await bot.history(OWNER, GROUP) if r.role == "bot")
        [message] = tg.sent_messages(GROUP)
        assert message.text == reply.text.strip()  # the final text, despite the 429s
        calls = [
            c
            for c in tg.calls()
            if c.method in ("sendMessage", "editMessageText") and c.params.get("chat_id") == GROUP
        ]
        assert [c.status for c in calls].count(429) == 2
        assert len([c for c in calls if c.status == 200]) >= 3, "the reply was not streamed"
        assert not [c for c in calls if c.status == 400]  # never an edit that changes nothing
        # Every edit Telegram took came at least INTERVAL after the one before it, and a call
        # refused with 429 was sent again only after the wait Telegram asked for.
        taken = [c for c in calls if c.status == 200]
        gaps = [b.at - a.at for a, b in itertools.pairwise(taken)]
        assert min(gaps) >= INTERVAL - 0.05, gaps
        for refused, after in itertools.pairwise(calls):
            if refused.status == 429:
                assert after.at - refused.at >= 1 - 0.05
        shown = [c.params["text"] for c in taken]
        assert all(a != b for a, b in itertools.pairwise(shown))
