"""Fast tier (mocked Bot, fake model, real SQLite): /chats buttons while a reply is written."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiogram.methods import AnswerCallbackQuery
from mocked_bot import text_update
from test_fast_tier import callback_update, eventually, fast_bot

from bot.telegram.handlers.conversations import ChatsChoice
from bot.telegram.texts import RU

USER = 1001


async def test_a_conversation_is_not_deleted_while_its_reply_is_written(tmp_path: Path) -> None:
    async with fast_bot(tmp_path) as fast:
        await fast.feed(text_update(USER, "первый"))
        conversation_id = (await fast.history(USER))[0].conversation_id
        fast.model.engine.held = True
        running = asyncio.create_task(fast.feed(text_update(USER, "второй")))
        await eventually(lambda: fast.model.engine.submitted[1:])
        data = ChatsChoice(user_id=USER, action="delete", conversation_id=conversation_id)
        await fast.feed(callback_update(USER, data.pack()))
        answers = [m for m in fast.bot.recorder.requests if isinstance(m, AnswerCallbackQuery)]
        assert [a.text for a in answers] == [RU.chats_busy]
        fast.model.engine.release()
        await running
        assert [r.text for r in await fast.history(USER)] == [
            "первый",
            "echo: первый",
            "второй",
            "echo: второй",
        ]
        await fast.feed(callback_update(USER, data.pack()))  # done writing: now it goes
        assert await fast.history(USER) == []
