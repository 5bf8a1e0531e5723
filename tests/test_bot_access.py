"""Access by @username belongs to the account first seen with the name; strangers in a group
never get their numeric id posted there."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from bot_e2e import STRANGER, has_text, instrument, running_bot

from bot.telegram.texts import RU
from models.runtime.chat_model import ChatModel
from storage.repositories import UserRepository
from storage.username_bindings import UsernameBindingRepository

FRIEND = 4242  # allowed as @friend_by_name (bot_e2e's settings)
SQUATTER = 5555
GROUP = -100888


async def test_a_username_stays_with_the_account_first_seen_with_it(
    chat_model: ChatModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.core.username_access")
    async with running_bot(chat_model, tmp_path, admin_users=["@Boss_Name"]) as bot:
        bot.tg.push_message(FRIEND, "/start", username="Friend_By_Name")
        await bot.wait(has_text(bot.tg, FRIEND, RU.start))
        async with bot.sessions() as session:
            assert await UsernameBindingRepository(session).holder("friend_by_name") == FRIEND
        bound = [r.getMessage() for r in caplog.records if "bound" in r.getMessage()]
        assert bound == [f"Access: @friend_by_name is now bound to the account {FRIEND}"]

        # The friend renames; someone else takes the freed name.
        bot.tg.push_message(FRIEND, "/help", username="renamed_friend")
        await bot.wait(has_text(bot.tg, FRIEND, RU.help))
        bot.tg.push_message(SQUATTER, "/start", username="friend_by_name")
        refusal = RU.access_closed.format(user_id=SQUATTER)
        await bot.wait(lambda: bot.tg.texts(SQUATTER) == [refusal])
        # The same for an admin's name.
        bot.tg.push_message(7000, "/help", username="boss_name")
        await bot.wait(has_text(bot.tg, 7000, RU.help))
        bot.tg.push_message(7000, "/start", username="boss_retired")
        bot.tg.push_message(7001, "/status", username="Boss_Name")
        await bot.wait(lambda: bot.tg.texts(7001) == [RU.access_closed.format(user_id=7001)])
        await bot.wait(has_text(bot.tg, 7000, RU.start))
        async with bot.sessions() as session:
            users = UserRepository(session)
            assert await users.get(SQUATTER) is None and await users.get(7001) is None
        assert bot.tg.texts(SQUATTER) == [refusal]  # nothing else came after the refusal
    assert any(
        "@friend_by_name belongs to the account 4242" in r.getMessage() for r in caplog.records
    )


async def test_a_stranger_in_a_group_is_not_shown_their_id_there(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    generations = instrument(chat_model)
    async with running_bot(chat_model, tmp_path) as bot:
        # Never talked to the bot privately: it may not write to them, so only the group hears
        # that access is closed.
        bot.tg.push_group_message(STRANGER, GROUP, "кто ты?", mention=True)
        await bot.wait(lambda: bot.tg.texts(GROUP) == [RU.access_closed_here])
        # After opening a private chat with the bot, the id goes there.
        bot.tg.push_message(STRANGER, "/start")
        await bot.wait(lambda: len(bot.tg.texts(STRANGER)) == 1)
        bot.tg.push_group_message(STRANGER, GROUP, "а теперь?", mention=True)
        await bot.wait(lambda: len(bot.tg.texts(GROUP)) == 2)
        await bot.wait(lambda: len(bot.tg.texts(STRANGER)) == 2)
        assert bot.tg.texts(GROUP) == [RU.access_closed_here, RU.access_closed_sent]
        assert bot.tg.texts(STRANGER) == [RU.access_closed.format(user_id=STRANGER)] * 2
        assert not any(str(STRANGER) in text for text in bot.tg.texts(GROUP))
        assert generations == []
