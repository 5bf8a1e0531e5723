"""End to end: how the bot copes with Telegram itself — edits instead of drafts, 429s, outages,
long replies, groups, edits, media, /forget."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bot_e2e import ADMIN, OWNER, has_text, instrument, load_model, running_bot

from bot.telegram.formatting import MESSAGE_LIMIT
from bot.telegram.texts import EN, RU
from models.runtime.chat_model import ChatModel
from storage.repositories import StatsRepository, UserRepository

GROUP = -100777


@pytest.fixture
async def chat_model(tiny_gguf: Path) -> AsyncIterator[ChatModel]:
    model = load_model(tiny_gguf)
    yield model
    await model.close()


async def test_without_drafts_one_message_is_edited_at_most_once_per_interval(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    instrument(chat_model, seconds_per_token=0.03)
    async with running_bot(chat_model, tmp_path, stream_edit_interval=0.5) as bot:
        bot.tg.disable_method("sendMessageDraft")  # a Bot API server without drafts
        bot.tg.push_message(OWNER, "Расскажи что-нибудь")
        await bot.wait_reply(OWNER)
        reply = (await bot.history(OWNER))[1]
        sent = await bot.wait(lambda: bot.tg.sent_messages(OWNER))
        assert len(sent) == 1
        message = sent[0]
        assert message.text == reply.text.strip()
        assert len(message.history) >= 3, "the reply was not streamed by edits"
        assert all(a != b for a, b in zip(message.history, message.history[1:], strict=False))
        # The fake server refuses an unchanged edit ("message is not modified"), so the history
        # alone cannot show one was tried: every edit call must have been accepted.
        assert all(call.status == 200 for call in bot.tg.calls("editMessageText"))
        edits = bot.tg.edits(OWNER)
        gaps = [b.at - a.at for a, b in itertools.pairwise(edits)]
        assert all(gap >= 0.45 for gap in gaps), gaps


async def test_429_on_an_edit_is_waited_out_and_the_final_text_arrives(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    instrument(chat_model, seconds_per_token=0.05)
    async with running_bot(chat_model, tmp_path, use_drafts=False) as bot:
        bot.tg.fail_next("editMessageText", status=429, retry_after=2)
        bot.tg.push_message(OWNER, "Расскажи что-нибудь")
        await bot.wait_reply(OWNER)
        reply = (await bot.history(OWNER))[1]
        await bot.wait(lambda: bot.tg.texts(OWNER) == [reply.text.strip()])
        calls = bot.tg.calls("editMessageText")
        refused = [c for c in calls if c.status == 429]
        assert len(refused) == 1
        later = [c for c in calls if c.at > refused[0].at]
        assert later, "nothing was sent after the 429"
        assert later[0].at - refused[0].at >= 1.95  # waited, no burst of retries
        assert all(c.status == 200 for c in later)


async def test_flood_limit_on_final_message_still_delivers(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.fail_next("sendMessage", status=429, retry_after=1, count=2)
        bot.tg.push_message(OWNER, "Привет")
        await bot.wait_reply(OWNER)
        reply = (await bot.history(OWNER))[1]
        await bot.wait(lambda: bot.tg.texts(OWNER) == [reply.text.strip()])
        sends = bot.tg.calls("sendMessage")
        assert [c.status for c in sends] == [429, 429, 200]
        gaps = [b.at - a.at for a, b in itertools.pairwise(sends)]
        assert all(gap >= 0.95 for gap in gaps), gaps  # each retry_after=1 waited out


async def test_telegram_outage_during_polling_is_survived(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.outage(3.0)
        bot.tg.push_message(OWNER, "/start")
        await bot.wait(lambda: any(c.status == 502 for c in bot.tg.calls("getUpdates")))
        assert not bot.tg.texts(OWNER)
        assert any(c.status == 502 for c in bot.tg.calls("getUpdates"))
        await bot.wait(lambda: bot.tg.texts(OWNER))
        bot.tg.push_message(OWNER, "Как дела?")
        await bot.wait_reply(OWNER)
        assert not bot.task.done()


async def test_reply_longer_than_a_message_is_split(tiny_gguf: Path, tmp_path: Path) -> None:
    model = load_model(tiny_gguf, max_new_tokens=1900)
    try:
        async with running_bot(model, tmp_path) as bot:
            bot.tg.push_message(OWNER, "Расскажи сказку")
            await bot.wait_reply(OWNER, within=60)
            reply = (await bot.history(OWNER))[1]
            assert len(reply.text) > MESSAGE_LIMIT
            await bot.wait(
                lambda: len(bot.tg.sent_messages(OWNER)) == len(reply.telegram_message_ids)
            )
            sent = bot.tg.sent_messages(OWNER)
            assert len(sent) >= 2
            assert all(len(m.text) <= MESSAGE_LIMIT for m in sent)
            joined = "".join(m.text for m in sent)
            assert "".join(joined.split()) == "".join(reply.text.split())
    finally:
        await model.close()


async def test_group_answers_only_when_mentioned_or_replied_to(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    generations = instrument(chat_model, seconds_per_token=0.01)  # long enough to see edits
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_group_message(OWNER, GROUP, "просто болтаем между собой")
        mention = bot.tg.push_group_message(OWNER, GROUP, "как погода?", mention=True)
        await bot.wait(lambda: bot.tg.texts(GROUP))
        await bot.wait(lambda: bot.app.services.chat.idle)  # the reply is written and delivered
        # No sleep needed: the mention was stored only after the earlier chatter of the same
        # conversation was handled to the end (updates of a conversation go in order).
        assert len(generations) == 1
        prompt = chat_model.tokenizer.decode(generations[0].prompt, special=True)
        assert "как погода?" in prompt and "болтаем" not in prompt and "@domovoy" not in prompt
        assert not bot.tg.drafts(GROUP), "drafts are for private chats"
        assert not [c for c in bot.tg.calls("sendMessageDraft") if c.params["chat_id"] == GROUP]
        # A group reply streams by edits (paced: one call a second in the chat).
        await bot.wait(lambda: bot.tg.edits(GROUP))
        bot_message = bot.tg.sent_messages(GROUP)[0]
        first_send = next(c for c in bot.tg.calls("sendMessage") if c.params["chat_id"] == GROUP)
        assert (
            first_send.params["reply_parameters"]["message_id"] == mention["message"]["message_id"]
        )
        bot.tg.push_group_message(
            OWNER, GROUP, "а завтра?", reply_to_message_id=bot_message.message_id
        )
        await bot.wait(lambda: len(generations) == 2)
        await bot.wait(lambda: len(bot.tg.sent_messages(GROUP)) == 2)
        history = await bot.history(OWNER, GROUP)
        assert [r.text for r in history if r.role == "user"] == ["как погода?", "а завтра?"]
        assert await bot.history(OWNER) == []  # the private conversation is separate


async def test_edited_message_corrects_the_turn_instead_of_adding_one(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        update = bot.tg.push_message(OWNER, "Сколько будет два плюс двп?")
        await bot.wait_reply(OWNER)
        bot.tg.push_edited_message(OWNER, update["message"]["message_id"], "Сколько будет 2+2?")
        await bot.wait(has_text(bot.tg, OWNER, RU.edit_noted))
        history = await bot.history(OWNER)
        assert next((r.role, r.text) for r in history) == ("user", "Сколько будет 2+2?")
        assert len(history) == 2


async def test_media_gets_an_only_text_reply(chat_model: ChatModel, tmp_path: Path) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_photo(OWNER, caption="что на фото?")
        bot.tg.push_sticker(OWNER)
        bot.tg.push_voice(OWNER, language_code="en")
        await bot.wait(lambda: len(bot.tg.texts(OWNER)) == 3)
        assert sorted(bot.tg.texts(OWNER)) == sorted([RU.only_text, RU.only_text, EN.only_text])
        assert await bot.history(OWNER) == []


async def test_forget_deletes_everything_after_confirmation(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_message(OWNER, "Запомни: я люблю борщ")
        await bot.wait_reply(OWNER)
        bot.tg.push_message(OWNER, "/forget")
        question = await bot.wait(
            lambda: [m for m in bot.tg.sent_messages(OWNER) if m.text == RU.forget_confirm]
        )
        bot.tg.press_button(OWNER, question[0].message_id, text=RU.forget_no)
        await bot.wait(has_text(bot.tg, OWNER, RU.forget_cancelled))
        assert len(await bot.history(OWNER)) == 2
        bot.tg.push_message(OWNER, "/forget")
        await bot.wait(
            lambda: (
                len([m for m in bot.tg.sent_messages(OWNER) if m.text == RU.forget_confirm]) == 1
            )  # the first question was edited into the cancellation
        )
        question = [m for m in bot.tg.sent_messages(OWNER) if m.text == RU.forget_confirm]
        bot.tg.press_button(OWNER, question[0].message_id, text=RU.forget_yes)
        await bot.wait(has_text(bot.tg, OWNER, RU.forget_done))
        async with bot.sessions() as session:
            assert await UserRepository(session).get(OWNER) is None
            totals = await StatsRepository(session).totals()
        assert (totals.users, totals.conversations, totals.messages) == (0, 0, 0)


async def test_forget_mid_reply_and_in_a_group_only_by_who_asked(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    instrument(chat_model, seconds_per_token=0.05)
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_group_message(ADMIN, GROUP, "привет всем")
        bot.tg.push_message(ADMIN, "Запомни: я админ")
        await bot.wait_reply(ADMIN)
        bot.tg.push_group_message(OWNER, GROUP, "/forget")
        question = await bot.wait(lambda: bot.tg.sent_messages(GROUP))
        # Someone else presses the owner's button: refused, nothing of theirs is deleted.
        bot.tg.press_button(GROUP, question[0].message_id, text=RU.forget_yes, user_id=ADMIN)
        refusal = await bot.wait(
            lambda: [c for c in bot.tg.calls("answerCallbackQuery") if c.params.get("text")]
        )
        assert refusal[0].params["text"] == RU.forget_not_yours
        assert len(await bot.history(ADMIN)) == 2 and question[0].text == RU.forget_confirm

        # The owner confirms while a reply of theirs is still being written.
        bot.tg.push_message(OWNER, "Напиши длинный ответ")
        await bot.wait(lambda: bot.tg.drafts(OWNER))
        bot.tg.press_button(GROUP, question[0].message_id, text=RU.forget_yes, user_id=OWNER)
        await bot.wait(has_text(bot.tg, GROUP, RU.forget_done))
        await bot.wait(lambda: bot.app.services.chat.idle)  # the forgotten reply has ended
        assert not bot.tg.sent_messages(OWNER), "nothing more of a forgotten reply is shown"
        async with bot.sessions() as session:
            assert await UserRepository(session).get(OWNER) is None
            assert await UserRepository(session).get(ADMIN) is not None
        assert await bot.history(OWNER) == []


async def test_added_to_a_group_says_how_to_talk_there(
    chat_model: ChatModel, tmp_path: Path
) -> None:
    async with running_bot(chat_model, tmp_path) as bot:
        bot.tg.push_group_message(OWNER, GROUP, "кто-то добавит бота")  # the chat exists
        adder = {"id": OWNER, "is_bot": False, "first_name": "Owner", "language_code": "en"}
        me = {**bot.tg.bot_user}
        bot.tg.push_update(
            {
                "my_chat_member": {
                    "chat": {"id": GROUP, "title": "Test group", "type": "supergroup"},
                    "from": adder,
                    "date": 1_700_000_000,
                    "old_chat_member": {"status": "left", "user": me},
                    "new_chat_member": {"status": "member", "user": me},
                }
            }
        )
        assert await bot.wait(lambda: bot.tg.texts(GROUP)) == [EN.group_hello]
