"""Two complete bot stacks (services, Dispatcher, middlewares, chat core, sweep) on one
PostgreSQL database, as two bot processes behind a load balancer would be: each has its own
database engine and its own advisory-lock connection; they share nothing in memory. Fed with
`feed_update` like the fast tier. Skipped without DOMOVOY_TEST_POSTGRES_URL (CI sets it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fake_model import FakeChatModel, FakeEngine, FakeGeneration
from mocked_bot import MockedBot, text_update

from bot.core.coordination import SharedCoordination
from bot.lifecycle import Services, open_services
from bot.settings import Settings
from bot.telegram.app import BotApp, build_app
from bot.telegram.sweep import Sweeper
from bot.telegram.texts import RU
from storage.database import create_engine
from storage.records import MessageRecord
from storage.repositories import ConversationRepository, MessageRepository

POSTGRES_URL = os.environ.get("DOMOVOY_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(
    not POSTGRES_URL, reason="set DOMOVOY_TEST_POSTGRES_URL=postgresql+asyncpg://... (wiped)"
)
OWNER, FRIEND = 2001, 2002


@dataclass
class LoggingEngine(FakeEngine):
    """Writes ("start"|"end", message) to a log shared by both stacks, a little slowly, so
    two replies of one chat written at once would show as overlapping."""

    log: list[tuple[str, str]] = field(default_factory=list)

    def submit(
        self, prompt: list[int], *, max_new_tokens: int, key: str | None = None, **_: Any
    ) -> FakeGeneration:
        generation = super().submit(prompt, max_new_tokens=max_new_tokens, key=key)
        question = "".join(chr(token) for token in prompt).rsplit("|", 1)[-1]
        inner = generation.stream

        async def stream() -> AsyncIterator[str]:
            self.log.append(("start", question))
            async for piece in inner():
                await asyncio.sleep(0.01)
                yield piece
            self.log.append(("end", question))

        generation.stream = stream  # type: ignore[method-assign]
        return generation


@dataclass
class Stack:
    app: BotApp
    bot: MockedBot
    model: FakeChatModel
    services: Services
    sweeper: Sweeper

    async def feed(self, update: Any) -> None:
        await self.app.dispatcher.feed_update(self.bot, update)

    @property
    def coordination(self) -> SharedCoordination:
        coordination = self.services.chat.coordination
        assert isinstance(coordination, SharedCoordination)
        return coordination


def settings_for(data_dir: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        bot_token="42:TEST-TOKEN-FOR-THE-FAST-TIER-0123456789",
        allowed_users=[str(OWNER), str(FRIEND)],
        data_dir=data_dir,
        database_url=POSTGRES_URL,
        stream_edit_interval=0.01,
        use_rich_messages=False,
    )


async def wipe() -> None:
    assert POSTGRES_URL
    engine = create_engine(POSTGRES_URL)
    try:
        async with engine.begin() as conn:
            # A connection a test left in a transaction fails the test, instead of hanging it.
            await conn.exec_driver_sql("SET lock_timeout = '10s'")
            await conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
            await conn.exec_driver_sql("CREATE SCHEMA public")
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def stack(folder: Path, log: list[tuple[str, str]]) -> AsyncIterator[Stack]:
    model = FakeChatModel(engine=LoggingEngine(log=log))
    settings = settings_for(folder)
    async with open_services(settings, model=model) as services:  # type: ignore[arg-type]
        bot = MockedBot()
        app = build_app(settings, services, bot=bot)
        sweeper = Sweeper(app, every=0.1, stop_poll=0.1)
        sweeper.start()
        try:
            yield Stack(app, bot, model, services, sweeper)
        finally:
            await sweeper.close()
            async with services.sessions() as session:  # what it took on ends first
                await services.chat.shutdown(session, 5)
            await app.dispatcher["typing"].close()


@dataclass
class Pair:
    a: Stack
    b: Stack
    log: list[tuple[str, str]]

    def texts(self, chat_id: int) -> list[str]:
        return self.a.bot.recorder.texts(chat_id) + self.b.bot.recorder.texts(chat_id)

    async def history(self, user_id: int) -> list[MessageRecord]:
        async with self.a.services.sessions() as session:
            conversation = await ConversationRepository(session).current(user_id, user_id)
            return await MessageRepository(session).history(conversation.id)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    await wipe()
    log: list[tuple[str, str]] = []
    async with stack(tmp_path / "a", log) as a, stack(tmp_path / "b", log) as b:
        yield Pair(a, b, log)


async def eventually(predicate: Callable[[], object], seconds: float = 20) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - what is polled has no event
            await asyncio.sleep(0.01)


async def test_one_chats_messages_split_across_processes_are_answered_one_at_a_time_in_order(
    pair: Pair,
) -> None:
    sent = [f"вопрос {i}" for i in range(8)]
    # Alternate stacks, all at once: their stores and replies race across the two processes.
    tasks = [
        asyncio.create_task((pair.a if i % 2 == 0 else pair.b).feed(text_update(OWNER, text)))
        for i, text in enumerate(sent)
    ]
    await asyncio.gather(*tasks)
    stored = [r.text for r in await pair.history(OWNER) if r.role == "user"]
    assert sorted(stored) == sorted(sent)
    # One reply at a time: every start is followed by its own end before the next start.
    starts = [text for event, text in pair.log if event == "start"]
    assert pair.log == [(event, text) for text in starts for event in ("start", "end")]
    # In order: the replies began in the order the messages were stored, each exactly once.
    assert starts == stored
    assert sorted(pair.texts(OWNER)) == sorted(f"echo: {text}" for text in sent)
    history = await pair.history(OWNER)
    assert all(r.status == "complete" for r in history)
    assert len([r for r in history if r.role == "bot"]) == len(sent)


async def test_an_update_delivered_to_both_processes_is_handled_once(pair: Pair) -> None:
    message = text_update(OWNER, "один раз")
    await asyncio.gather(pair.a.feed(message), pair.b.feed(message))
    assert pair.texts(OWNER) == ["echo: один раз"]
    # A command stores nothing the message ids could catch: only the update id does.
    command = text_update(OWNER, "/system Ты — пират.")
    await asyncio.gather(pair.a.feed(command), pair.b.feed(command))
    assert pair.texts(OWNER).count(RU.system_set) == 1
    # Delivered again later (after a restart of the first process): still dropped.
    await pair.b.feed(message)
    # Each process's texts are listed apart: which one handled which update is a race.
    assert sorted(pair.texts(OWNER)) == sorted(["echo: один раз", RU.system_set])


async def test_a_duplicate_is_dropped_once_the_first_is_stored_not_after_its_reply(
    pair: Pair,
) -> None:
    engine = pair.a.model.engine
    engine.stall_after = 1  # the first delivery's reply hangs after one piece
    message = text_update(OWNER, "долгий ответ")
    first = asyncio.create_task(pair.a.feed(message))
    await eventually(lambda: engine.submitted and engine.submitted[0]._sent)
    # The same update again, to the other process and to this one: both are dropped at once,
    # while the first delivery's reply is still being written.
    async with asyncio.timeout(5):
        await asyncio.gather(pair.b.feed(message), pair.a.feed(message))
    assert len(engine.submitted) == 1 and pair.b.model.engine.submitted == []
    assert [r.text for r in await pair.history(OWNER) if r.role == "user"] == ["долгий ответ"]
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)


async def test_an_update_taken_by_a_process_that_dies_before_storing_it_is_not_lost(
    pair: Pair,
) -> None:
    message = text_update(OWNER, "не потеряй меня")
    taken, hold = asyncio.Event(), asyncio.Event()

    async def take_and_die() -> None:
        # The first process takes the update on and dies before its message is stored.
        async with pair.a.services.chat.update_once(message.update_id) as turn:
            assert turn.first
            taken.set()
            await hold.wait()

    dying = asyncio.create_task(take_and_die())
    await taken.wait()
    await pair.a.coordination.abandon()
    # Telegram had no answer from it, so it delivers the update again, to the other process.
    await pair.b.feed(message)
    assert pair.b.bot.recorder.texts(OWNER) == ["echo: не потеряй меня"]
    assert [(r.role, r.text) for r in await pair.history(OWNER)] == [
        ("user", "не потеряй меня"),
        ("bot", "echo: не потеряй меня"),
    ]
    hold.set()
    await dying
    # Taken on and stored now: a later delivery is dropped.
    await pair.b.feed(message)
    assert pair.b.bot.recorder.texts(OWNER) == ["echo: не потеряй меня"]


async def test_stop_in_one_process_ends_the_reply_running_in_the_other(pair: Pair) -> None:
    await pair.b.feed(text_update(OWNER, "/stop"))
    assert pair.b.bot.recorder.texts(OWNER) == [RU.stop_nothing]
    pair.a.model.engine.stall_after = 1  # the reply is being written, and stays so
    running = asyncio.create_task(pair.a.feed(text_update(OWNER, "долгий ответ")))
    await eventually(lambda: ("start", "долгий ответ") in pair.log)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    await pair.b.feed(text_update(OWNER, "/stop"))
    async with asyncio.timeout(5):
        await running
    assert loop.time() - asked < 1.0
    assert pair.b.bot.recorder.texts(OWNER) == [RU.stop_nothing, RU.stop_done]
    [reply] = pair.a.bot.recorder.texts(OWNER)
    assert reply.endswith(f"<i>{RU.reply_stopped}</i>")
    history = await pair.history(OWNER)
    assert [(r.role, r.status) for r in history] == [("user", "complete"), ("bot", "partial")]


async def test_a_process_shut_down_mid_queue_leaves_its_waiting_messages_to_the_other(
    pair: Pair,
) -> None:
    engine = pair.a.model.engine
    engine.stall_after = 1
    running = asyncio.create_task(pair.a.feed(text_update(OWNER, "первый")))
    await eventually(lambda: engine.submitted and engine.submitted[0]._sent)
    queued = asyncio.create_task(pair.a.feed(text_update(OWNER, "второй")))
    other = asyncio.create_task(pair.a.feed(text_update(FRIEND, "третий")))
    await eventually(lambda: pair.a.services.chat.waiting >= 3)
    await pair.a.sweeper.close()
    async with pair.a.services.sessions() as session:
        assert await pair.a.services.chat.shutdown(session, 5)
    await asyncio.gather(running, queued, other)
    a_owner = pair.a.bot.recorder.texts(OWNER)
    assert any(text.endswith(f"<i>{RU.reply_interrupted}</i>") for text in a_owner)
    # Told the truth: the answer comes in seconds, from the other process, not at a restart.
    assert RU.answer_elsewhere in a_owner and RU.answer_after_restart not in a_owner
    assert pair.a.bot.recorder.texts(FRIEND) == [RU.answer_elsewhere]
    # The other process answers them now, not at this one's restart.
    await eventually(lambda: "echo: второй" in pair.b.bot.recorder.texts(OWNER), 5)
    await eventually(lambda: "echo: третий" in pair.b.bot.recorder.texts(FRIEND), 5)
    assert pair.b.bot.recorder.texts(OWNER) == ["echo: второй"]  # the first is not redone
    history = await pair.history(OWNER)
    assert [(r.role, r.text, r.status) for r in history if r.text] == [
        ("user", "первый", "complete"),
        ("bot", "echo:", "partial"),
        ("user", "второй", "complete"),
        ("bot", "echo: второй", "complete"),
    ]


async def test_a_killed_process_leaves_a_partial_reply_and_its_messages_to_the_other(
    pair: Pair,
) -> None:
    # The live process sweeps only when an orphan is seen (its periodic sweep would race the
    # new message below): restarted now, its first sweep is long over at the kill.
    await pair.b.sweeper.close()
    pair.b.sweeper._every = 60.0
    pair.b.sweeper.start()
    engine = pair.a.model.engine
    engine.stall_after = 1
    running = asyncio.create_task(pair.a.feed(text_update(OWNER, "первый")))
    await eventually(lambda: engine.submitted and engine.submitted[0]._sent)
    queued = asyncio.create_task(pair.a.feed(text_update(OWNER, "второй")))
    await eventually(lambda: pair.a.services.chat.waiting >= 2)
    while len(await pair.history(OWNER)) < 3:  # noqa: ASYNC110 - rows have no event
        await asyncio.sleep(0.01)
    # The pending reply and the waiting message of a live process are left alone by the
    # other's sweeps.
    assert await pair.b.sweeper.sweep() == 0
    assert [(r.role, r.status) for r in await pair.history(OWNER)] == [
        ("user", "complete"),
        ("bot", "pending"),
        ("user", "pending"),
    ]
    # "Kill" the first process: its sweep ends and its lock connection drops without a word.
    await pair.a.sweeper.close()
    await pair.a.coordination.abandon()

    # A new message of the chat, to the live process: the dead one's waiting message is
    # older, so it is answered first (adopted at once, not at the next sweep).
    await pair.b.feed(text_update(OWNER, "третий"))
    # The cut reply is shown first (nothing of it was saved: only its note), then the rest.
    assert pair.b.bot.recorder.texts(OWNER) == [
        f"<i>{RU.reply_interrupted}</i>",
        "echo: второй",
        "echo: третий",
    ]
    history = await pair.history(OWNER)
    assert [(r.role, r.text, r.status) for r in history] == [
        ("user", "первый", "complete"),
        ("bot", "", "partial"),  # nothing saved yet: the kill came before the first checkpoint
        ("user", "второй", "complete"),
        ("user", "третий", "complete"),
        ("bot", "echo: второй", "complete"),
        ("bot", "echo: третий", "complete"),
    ]
    # Stored in that order, but the model saw each reply right after its own message.
    assert [m.content for m in pair.b.model.prompts[-1]] == [
        "первый",
        "второй",
        "echo: второй",
        "третий",
    ]
    assert [text for event, text in pair.log if event == "start"] == [
        "первый",
        "второй",
        "третий",
    ]
    for task in (running, queued):  # the dead process's tasks are gone with it
        task.cancel()
    await asyncio.gather(running, queued, return_exceptions=True)


async def test_a_reply_stored_by_a_process_killed_before_sending_it_is_sent_by_the_other(
    pair: Pair,
) -> None:
    # The first process stores its reply final and is killed before the message goes out.
    pair.a.bot.recorder.hold_sends = asyncio.Event()  # never set: it dies first
    pair.b.bot.recorder.on_send = lambda text: pair.log.append(("sent", text))
    dying = asyncio.create_task(pair.a.feed(text_update(OWNER, "первый")))
    await pair.a.bot.recorder.send_held.wait()
    [question, stored] = await pair.history(OWNER)
    assert (stored.role, stored.status, stored.delivered) == ("bot", "complete", False)
    # The chat's next message, to the live process: it waits for the unsent reply (held by
    # a live process, then by nobody), which must reach the chat first.
    pair.b.sweeper._every = 60.0  # no sweep by the clock: the waiting reply calls it
    second = asyncio.create_task(pair.b.feed(text_update(OWNER, "второй")))
    await pair.a.sweeper.close()
    await pair.a.coordination.abandon()  # the kill: its locks go, its tasks with it
    dying.cancel()
    await asyncio.gather(dying, return_exceptions=True)
    async with asyncio.timeout(10):
        await second
    assert pair.b.bot.recorder.texts(OWNER) == ["echo: первый", "echo: второй"]
    assert pair.a.bot.recorder.texts(OWNER) == []
    # Sent before the next reply even began.
    assert pair.log.index(("sent", "echo: первый")) < pair.log.index(("start", "второй"))
    history = await pair.history(OWNER)
    assert [(r.role, r.text, r.status, r.delivered) for r in history] == [
        ("user", "первый", "complete", True),
        ("bot", "echo: первый", "complete", True),
        ("user", "второй", "complete", True),
        ("bot", "echo: второй", "complete", True),
    ]
    assert history[1].telegram_message_ids  # tied to the message that carries it now
    # Sent once: later sweeps find nothing left.
    await pair.b.sweeper.sweep()
    assert pair.b.bot.recorder.texts(OWNER) == ["echo: первый", "echo: второй"]
    assert question.id < stored.id
