"""The fast tier: the real Dispatcher, routers, middlewares and chat core on a real SQLite
file, fed updates with `feed_update`, talking to aiogram's mocked-bot pattern and a fake model.
Handler and ordering logic is checked here in milliseconds; the e2e tier runs the real model
against the fake Bot API server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiogram.methods import AnswerCallbackQuery, SendChatAction, SendMessage
from aiogram.types import CallbackQuery, Chat, Message, Update, User
from fake_model import FakeChatModel
from mocked_bot import MockedBot, text_update

from bot.lifecycle import Services, open_services
from bot.settings import Settings
from bot.telegram.app import BotApp, build_app
from bot.telegram.handlers.forget import ForgetChoice
from bot.telegram.restart import answer_waiting_messages
from bot.telegram.texts import RU
from storage.records import MessageRecord
from storage.repositories import ConversationRepository, MessageRepository

OWNER, FRIEND, ADMIN = 1001, 1003, 1002


@dataclass
class Fast:
    app: BotApp
    bot: MockedBot
    model: FakeChatModel
    services: Services

    async def feed(self, update: Update) -> None:
        await self.app.dispatcher.feed_update(self.bot, update)

    async def history(self, user_id: int) -> list[MessageRecord]:
        async with self.services.sessions() as session:
            conversation = await ConversationRepository(session).current(user_id, user_id)
            return await MessageRepository(session).history(conversation.id)


def fast_settings(data_dir: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        bot_token="42:TEST-TOKEN-FOR-THE-FAST-TIER-0123456789",
        allowed_users=[str(OWNER), str(FRIEND)],
        admin_users=[str(ADMIN)],
        data_dir=data_dir,
        stream_edit_interval=0.01,
        use_rich_messages=False,  # the mocked bot answers the methods of the plain path
    )


@contextlib.asynccontextmanager
async def fast_bot(data_dir: Path, model: FakeChatModel | None = None) -> AsyncIterator[Fast]:
    model = model or FakeChatModel()
    settings = fast_settings(data_dir)
    async with open_services(settings, model=model) as services:  # type: ignore[arg-type]
        bot = MockedBot()
        app = build_app(settings, services, bot=bot)
        try:
            yield Fast(app, bot, model, services)
        finally:
            await app.dispatcher["typing"].close()


async def eventually(predicate: Callable[[], object]) -> None:
    async with asyncio.timeout(20):
        while not predicate():  # noqa: ASYNC110 - what is polled has no event
            await asyncio.sleep(0.005)


@pytest.fixture
async def fast(tmp_path: Path) -> AsyncIterator[Fast]:
    async with fast_bot(tmp_path) as running:
        yield running


def callback_update(user_id: int, data: str) -> Update:
    user = User(id=user_id, is_bot=False, first_name="u", language_code="ru")
    chat = Chat(id=user_id, type="private")
    message = Message(message_id=1, date=datetime.now(UTC), chat=chat, text="?")
    query = CallbackQuery(
        id=f"q{user_id}", from_user=user, chat_instance="c", message=message, data=data
    )
    return Update(update_id=text_update(user_id, "-").update_id, callback_query=query)


async def test_a_message_is_answered_with_the_models_reply(fast: Fast) -> None:
    await fast.feed(text_update(OWNER, "привет"))
    assert fast.bot.recorder.texts(OWNER) == ["echo: привет"]
    stored = await fast.history(OWNER)
    assert [(r.role, r.text, r.status) for r in stored] == [
        ("user", "привет", "complete"),
        ("bot", "echo: привет", "complete"),
    ]
    assert stored[1].telegram_message_ids  # linked to the Telegram message that carries it


async def test_system_command_sets_and_shows_the_prompt(fast: Fast) -> None:
    await fast.feed(text_update(OWNER, "/system Ты — пират."))
    await fast.feed(text_update(OWNER, "/system"))
    assert fast.bot.recorder.texts(OWNER) == [
        RU.system_set,
        RU.system_current.format(prompt="Ты — пират."),
    ]


async def test_messages_sent_back_to_back_are_stored_and_answered_in_order(fast: Fast) -> None:
    # aiogram handles each update as its own task; they interleave at every await.
    sent = []
    for trial in range(10):
        batch = [f"сообщение {trial}-{i}" for i in range(3)]
        sent += batch
        await asyncio.gather(*(fast.feed(text_update(OWNER, text)) for text in batch))
    stored = [r.text for r in await fast.history(OWNER) if r.role == "user"]
    assert stored == sent
    assert [prompt[-1].content for prompt in fast.model.prompts] == sent


async def test_a_message_racing_forget_leaves_nothing_behind(fast: Fast) -> None:
    confirm = ForgetChoice(user_id=OWNER, confirm=True).pack()
    for _ in range(10):
        await fast.feed(text_update(OWNER, "до"))
        await asyncio.gather(
            fast.feed(text_update(OWNER, "пароль 1234")),
            fast.feed(callback_update(OWNER, confirm)),
        )
        async with fast.services.sessions() as session:
            conversations = await ConversationRepository(session).list_for_user(OWNER)
        assert conversations == [], "a row written after /forget survived it"
    answers = [m for m in fast.bot.recorder.requests if isinstance(m, AnswerCallbackQuery)]
    assert len(answers) == 10


async def test_status_counts_every_message_waiting_for_an_answer(fast: Fast) -> None:
    fast.model.engine.held = True
    pending = [
        asyncio.create_task(fast.feed(text_update(user, f"вопрос {i}")))
        for i, user in enumerate([OWNER, OWNER, OWNER, FRIEND, FRIEND])
    ]
    await eventually(lambda: fast.services.chat.waiting >= 5)
    await fast.feed(text_update(ADMIN, "/status"))
    [status] = fast.bot.recorder.texts(ADMIN)
    assert "В очереди: 5" in status
    fast.model.engine.release()
    await asyncio.gather(*pending)
    assert fast.services.chat.waiting == 0


async def test_a_flood_in_one_chat_shows_one_typing_indicator(fast: Fast) -> None:
    fast.model.engine.held = True
    pending = [asyncio.create_task(fast.feed(text_update(OWNER, f"вопрос {i}"))) for i in range(30)]
    await eventually(lambda: fast.services.chat.waiting >= 30)
    fast.model.engine.release()
    await asyncio.gather(*pending)
    # All 30 replies have ended, so every indicator that was ever sent is counted.
    actions = [m for m in fast.bot.recorder.requests if isinstance(m, SendChatAction)]
    assert len(actions) == 1


async def test_shutdown_answers_the_waiting_messages_after_the_restart(tmp_path: Path) -> None:
    async with fast_bot(tmp_path) as first:
        first.model.engine.held = True
        first.model.engine.stall_after = 1
        running = asyncio.create_task(first.feed(text_update(OWNER, "первый")))
        await eventually(lambda: first.model.engine.submitted)  # the owner's reply is first
        waiting = asyncio.create_task(first.feed(text_update(FRIEND, "второй")))
        # The owner's second message waits for the first reply, in its own conversation.
        second_own = asyncio.create_task(first.feed(text_update(OWNER, "и ещё")))
        await eventually(lambda: len(first.model.engine.submitted) >= 2)
        await eventually(lambda: first.services.chat.waiting >= 3)
        first.model.engine.release()
        # The owner's reply is being written when the bot shuts down.
        await eventually(lambda: first.model.engine.submitted[0]._sent)
        async with first.services.sessions() as session:
            assert await first.services.chat.shutdown(session, 5)
        await asyncio.gather(running, waiting, second_own)
        owner_texts = first.bot.recorder.texts(OWNER)
        assert len(owner_texts) == 2 and owner_texts[0].endswith(f"<i>{RU.reply_interrupted}</i>")
        assert owner_texts[1] == RU.answer_after_restart
        assert not any(RU.reply_stopped in text for text in owner_texts)
        assert first.bot.recorder.texts(FRIEND) == [RU.answer_after_restart]
        friend = await first.history(FRIEND)
        assert [(r.role, r.status) for r in friend if r.role == "user"] == [("user", "pending")]
    async with fast_bot(tmp_path) as second:
        await answer_waiting_messages(second.app)
        assert second.bot.recorder.texts(FRIEND) == ["echo: второй"]
        # The interrupted one got its answer already; the waiting one is answered now.
        assert second.bot.recorder.texts(OWNER) == ["echo: и ещё"]
        friend = await second.history(FRIEND)
        assert [(r.role, r.text, r.status) for r in friend if r.text] == [
            ("user", "второй", "complete"),
            ("bot", "echo: второй", "complete"),
        ]


async def test_a_failing_database_costs_one_sentence_and_recovers(
    fast: Fast, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy import event

    broken = True

    def read_only(connection: object, _record: object) -> None:
        cursor = connection.cursor()  # type: ignore[attr-defined]
        cursor.execute(f"PRAGMA query_only = {'ON' if broken else 'OFF'}")
        cursor.close()

    await fast.services.db.dispose()  # new connections take the pragma
    event.listen(fast.services.db.sync_engine, "connect", read_only)
    await fast.feed(text_update(OWNER, "не сохранится"))
    assert fast.bot.recorder.texts(OWNER) == [RU.storage_failed]
    failures = [r for r in caplog.records if "storage failed" in r.getMessage()]
    assert len(failures) == 1 and "не сохранится" not in failures[0].getMessage()
    broken = False
    await fast.services.db.dispose()
    await fast.feed(text_update(OWNER, "теперь сохранится"))
    assert fast.bot.recorder.texts(OWNER)[-1] == "echo: теперь сохранится"
    sends = [m for m in fast.bot.recorder.requests if isinstance(m, SendMessage)]
    assert len(sends) == 2


async def test_a_message_delivered_twice_is_stored_and_answered_once(fast: Fast) -> None:
    # After a restart Telegram re-sends the updates the last run had not confirmed.
    update = text_update(OWNER, "один раз")
    await fast.feed(update)
    await fast.feed(update)
    stored = await fast.history(OWNER)
    assert [(r.role, r.text) for r in stored] == [("user", "один раз"), ("bot", "echo: один раз")]
    assert fast.bot.recorder.texts(OWNER) == ["echo: один раз"]


async def test_after_a_restart_the_waiting_message_is_answered_before_a_new_one(
    tmp_path: Path,
) -> None:
    async with fast_bot(tmp_path) as first:
        first.model.engine.held = True
        running = asyncio.create_task(first.feed(text_update(OWNER, "первый")))
        queued = asyncio.create_task(first.feed(text_update(OWNER, "второй")))
        await eventually(lambda: first.services.chat.waiting >= 2)
        async with first.services.sessions() as session:
            await first.services.chat.shutdown(session, 5)
        await asyncio.gather(running, queued)
    async with fast_bot(tmp_path) as second:
        second.model.engine.held = True
        backlog = asyncio.create_task(answer_waiting_messages(second.app))
        await eventually(lambda: second.services.chat.waiting >= 2)
        new = asyncio.create_task(second.feed(text_update(OWNER, "третий")))
        await eventually(lambda: second.services.chat.waiting >= 3)
        second.model.engine.release()
        await asyncio.gather(backlog, new)
        assert [p[-1].content for p in second.model.prompts] == ["первый", "второй", "третий"]
        assert second.bot.recorder.texts(OWNER) == [
            "echo: первый",
            "echo: второй",
            "echo: третий",
        ]


async def test_a_message_in_another_chat_racing_forget_leaves_nothing(fast: Fast) -> None:
    group = -100500
    confirm = ForgetChoice(user_id=OWNER, confirm=True).pack()
    for _ in range(10):
        await fast.feed(text_update(OWNER, "до"))
        await asyncio.gather(
            fast.feed(text_update(OWNER, "@domovoy_bot пароль 1234", chat_id=group)),
            fast.feed(callback_update(OWNER, confirm)),
        )
        async with fast.services.sessions() as session:
            assert await ConversationRepository(session).list_for_user(OWNER) == []
            assert await fast.services.chat.user(session, OWNER) is None


async def test_a_database_failing_mid_reply_costs_one_sentence(
    fast: Fast, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy import event

    broken = False

    def read_only(connection: object, _record: object) -> None:
        cursor = connection.cursor()  # type: ignore[attr-defined]
        cursor.execute(f"PRAGMA query_only = {'ON' if broken else 'OFF'}")
        cursor.close()

    event.listen(fast.services.db.sync_engine, "connect", read_only)
    fast.model.engine.stall_after = 1
    reply = asyncio.create_task(fast.feed(text_update(OWNER, "долгий вопрос")))
    await eventually(lambda: fast.model.engine.submitted and fast.model.engine.submitted[0]._sent)
    broken = True
    await fast.services.db.dispose()  # the reply's next write gets a read-only connection
    fast.model.engine.stall_after = None
    await reply
    assert fast.bot.recorder.texts(OWNER)[-1] == RU.storage_failed
    assert len([r for r in caplog.records if "storage failed" in r.getMessage()]) == 1
    broken = False
    await fast.services.db.dispose()
    stored = await fast.history(OWNER)
    assert (stored[0].role, stored[0].text) == ("user", "долгий вопрос")  # kept
    await fast.feed(text_update(OWNER, "снова"))
    assert fast.bot.recorder.texts(OWNER)[-1] == "echo: снова"


async def test_a_reply_stored_but_not_sent_before_the_bot_stopped_is_sent_at_the_next_start(
    tmp_path: Path,
) -> None:
    async with fast_bot(tmp_path) as first:
        first.bot.recorder.hold_sends = asyncio.Event()  # the process dies before sending
        dying = asyncio.create_task(first.feed(text_update(OWNER, "первый")))
        await first.bot.recorder.send_held.wait()
        [_, stored] = await first.history(OWNER)
        assert (stored.status, stored.delivered) == ("complete", False)
        dying.cancel()  # a kill: nothing after this point runs
        await asyncio.gather(dying, return_exceptions=True)
    assert first.bot.recorder.texts(OWNER) == []
    async with fast_bot(tmp_path) as second:
        await answer_waiting_messages(second.app)
        assert second.bot.recorder.texts(OWNER) == ["echo: первый"]
        [_, sent] = await second.history(OWNER)
        assert sent.delivered and sent.telegram_message_ids
        await second.feed(text_update(OWNER, "второй"))
        assert second.bot.recorder.texts(OWNER) == ["echo: первый", "echo: второй"]
    async with fast_bot(tmp_path) as third:  # sent once: nothing is left for a later start
        await answer_waiting_messages(third.app)
        assert third.bot.recorder.texts(OWNER) == []
