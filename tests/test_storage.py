"""Storage on real SQLite files: round trips, reset, forget, concurrency, crashes, migrations."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import storage_child
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import storage.database
from storage.database import (
    SQLITE_BUSY_TIMEOUT_MS,
    alembic_config,
    checkpoint,
    create_engine,
    create_session_factory,
    migrate,
)
from storage.errors import StorageError
from storage.records import ConversationRecord, MessageRecord, Role, StorageStats
from storage.repositories import (
    ConversationRepository,
    MessageRepository,
    StatsRepository,
    UserRepository,
    history_query,
)
from storage.tables import Base
from storage.validation import MAX_TEXT_CHARS

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("DOMOVOY_TEST_POSTGRES_URL")
Sessions = async_sessionmaker[AsyncSession]

# Everything Telegram can hand the bot, and what it may write back.
TRICKY_TEXTS = [
    "Привет! Как дела?",
    "👨‍👩‍👧‍👦 семья, 🇷🇺 флаг, 🙂",
    "RTL: שלום עולם — مرحبا بالعالم",
    "\x00",
    "до\x00после\x00",
    "\ud800",
    "одинокий \udfff в конце",
    "\ud83d\ude00 пара суррогатов как два кода",
    "\x1a",
    "\x1a0000 похоже на экранирование \x1a0041",
    "\\u0000 и \\x00 буквами",
    "",
    " \r\n\t отступы \n\n",
    "е\u0301ще комбинированные",
    "\ufeff\u200b\u2028\u2029\ufffe\uffff",
    "я" * 4096,
    "🙂" * 4096,
    "Длинный ответ бота. " * 1000,  # 20k characters
]


def sqlite_url(folder: Path) -> str:
    return f"sqlite+aiosqlite:///{folder / 'data' / 'domovoy.db'}"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path)


async def migrated(url: str) -> AsyncEngine:
    engine = create_engine(url)
    await migrate(engine)
    return engine


async def empty_postgres(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
            await conn.exec_driver_sql("CREATE SCHEMA public")
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """The portable behaviour runs on SQLite always, and on PostgreSQL when
    DOMOVOY_TEST_POSTGRES_URL names a throwaway database (it is wiped)."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
    elif POSTGRES_URL:
        url = POSTGRES_URL
        await empty_postgres(url)
    else:
        pytest.skip("set DOMOVOY_TEST_POSTGRES_URL=postgresql+asyncpg://... (wiped) to run")
    engine = await migrated(url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def sqlite_engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = await migrated(url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> Sessions:
    return create_session_factory(engine)


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(sa.text(sql), params)).scalar()


async def add_user_with_history(
    sessions: Sessions, user_id: int, chat_id: int, texts: list[str]
) -> tuple[ConversationRecord, list[MessageRecord]]:
    async with sessions() as session:
        await UserRepository(session).upsert(
            user_id, username=f"u{user_id}", first_name="Имя", language_code="ru"
        )
        conversation = await ConversationRepository(session).current(user_id, chat_id)
        messages = MessageRepository(session)
        stored = []
        for number, text in enumerate(texts):
            role: Role = "user" if number % 2 == 0 else "bot"
            stored.append(
                await messages.add(
                    conversation.id, role, text, telegram_message_ids=[user_id * 100 + number]
                )
            )
        await session.commit()
    return conversation, stored


# --- engine set-up ------------------------------------------------------------------------------


async def test_engine_creates_the_folder_and_tunes_sqlite(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "deep" / "er")
    assert not (tmp_path / "deep").exists()
    engine = create_engine(url)
    try:
        await migrate(engine)
        assert (tmp_path / "deep" / "er" / "data" / "domovoy.db").is_file()
        async with create_session_factory(engine)() as session:
            pragmas = {
                name: (await session.execute(sa.text(f"PRAGMA {name}"))).scalar()
                for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
            }
    finally:
        await engine.dispose()
    assert pragmas == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "synchronous": 1,  # NORMAL
        "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
    }


def test_a_malformed_url_is_one_clear_error() -> None:
    with pytest.raises(StorageError, match="not a valid SQLAlchemy URL"):
        create_engine("not a url at all")


# --- round trips --------------------------------------------------------------------------------


async def test_every_field_round_trips_exactly_through_a_new_engine(
    sessions: Sessions, engine: AsyncEngine
) -> None:
    async with sessions() as session:
        users = UserRepository(session)
        first = await users.upsert(
            7, username="first_name", first_name="Ан\ud800на 👩", language_code="ru"
        )
        await users.set_system_prompt(7, "Ты — пират.\x00 Отвечай «арр» 🏴‍☠️")
        conversation = await ConversationRepository(session).current(7, -100123456789)
        messages = MessageRepository(session)
        added = [
            await messages.add(
                conversation.id,
                "user" if number % 2 == 0 else "bot",
                text,
                status=("complete", "partial", "failed", "pending")[number % 4],
                n_tokens=number * 3 if number % 3 else None,
                telegram_message_ids=list(range(number % 3)) if number else [2**40, 2**62],
                model=None if number % 2 == 0 else f"ruGPT-3.5-13B-Q4_K_M.gguf+lora#{number}",
            )
            for number, text in enumerate(TRICKY_TEXTS)
        ]
        await session.commit()

    again = create_engine(engine.url.render_as_string(hide_password=False))
    try:
        async with create_session_factory(again)() as session:
            user = await UserRepository(session).get(7)
            current = await ConversationRepository(session).current(7, -100123456789)
            history = await MessageRepository(session).history(conversation.id)
        async with again.connect() as conn:
            raw = (await conn.execute(sa.text("SELECT text FROM messages ORDER BY id"))).scalars()
            raw_texts = list(raw)
    finally:
        await again.dispose()

    assert user is not None
    assert (user.id, user.username, user.first_name, user.language_code) == (
        7,
        "first_name",
        "Ан\ud800на 👩",
        "ru",
    )
    assert user.system_prompt == "Ты — пират.\x00 Отвечай «арр» 🏴‍☠️"
    assert user.created_at == first.created_at
    assert user.created_at.tzinfo == UTC
    assert user.updated_at >= first.updated_at
    assert current == conversation
    assert (conversation.user_id, conversation.chat_id, conversation.closed_at) == (
        7,
        -100123456789,
        None,
    )
    assert history == added
    assert [message.text for message in history] == TRICKY_TEXTS
    assert [len(message.text) for message in history] == [len(text) for text in TRICKY_TEXTS]
    assert history[0].telegram_message_ids == (2**40, 2**62)
    assert all(message.created_at.tzinfo == UTC for message in history)
    # Ordinary text is stored as it is, so an operator reading the file sees plain text.
    assert raw_texts[0] == TRICKY_TEXTS[0]
    assert raw_texts[-1] == TRICKY_TEXTS[-1]
    assert "\x00" not in raw_texts[4]


async def test_upsert_refreshes_names_but_keeps_prompt_and_creation_time(
    sessions: Sessions,
) -> None:
    async with sessions() as session:
        users = UserRepository(session)
        before = await users.upsert(1, username="old", first_name="Старое", language_code="ru")
        await users.set_system_prompt(1, "свой промпт")
        after = await users.upsert(1, username=None, first_name="Но\udc00вое", language_code="en")
        await session.commit()
    async with sessions() as session:
        stored = await UserRepository(session).get(1)
        assert await UserRepository(session).get(2) is None
    assert stored == after
    assert (after.username, after.first_name, after.language_code) == (None, "Но\udc00вое", "en")
    assert after.system_prompt == "свой промпт"
    assert after.created_at == before.created_at
    assert after.updated_at > before.updated_at
    async with sessions() as session:
        await UserRepository(session).set_system_prompt(1, None)
        await session.commit()
        stored = await UserRepository(session).get(1)
    assert stored is not None and stored.system_prompt is None


async def test_a_streamed_reply_is_updated_in_place(sessions: Sessions) -> None:
    conversation, _ = await add_user_with_history(sessions, 5, 5, ["Вопрос"])
    async with sessions() as session:
        messages = MessageRepository(session)
        reply = await messages.add(conversation.id, "bot", "", status="pending")
        await messages.update(reply.id, text="Нача", telegram_message_ids=[901])
        await messages.update(
            reply.id,
            text="Начало и конец",
            status="complete",
            n_tokens=12,
            telegram_message_ids=[901, 902],
            model="tiny.gguf",
        )
        await session.commit()
    async with sessions() as session:
        messages = MessageRepository(session)
        stored = await messages.get(reply.id)
        by_second_part = await messages.find_by_telegram_id(conversation.id, 902)
        elsewhere = await messages.find_by_telegram_id(conversation.id + 1, 902)
        unknown = await messages.find_by_telegram_id(conversation.id, 903)
        history = await messages.history(conversation.id)
    assert stored is not None
    assert (stored.text, stored.status, stored.n_tokens, stored.model) == (
        "Начало и конец",
        "complete",
        12,
        "tiny.gguf",
    )
    assert stored.telegram_message_ids == (901, 902)
    assert by_second_part == stored
    assert elsewhere is None and unknown is None
    assert [message.id for message in history] == [history[0].id, reply.id]


# --- reset and forget ---------------------------------------------------------------------------


async def test_reset_keeps_the_old_conversation_closed(sessions: Sessions) -> None:
    group = -1001
    old, old_messages = await add_user_with_history(sessions, 1, 1, ["раз", "два"])
    in_group, _ = await add_user_with_history(sessions, 1, group, ["в группе"])
    neighbour, _ = await add_user_with_history(sessions, 2, group, ["сосед"])
    assert len({old.id, in_group.id, neighbour.id}) == 3

    async with sessions() as session:
        new = await ConversationRepository(session).reset(1, 1)
        await session.commit()
    async with sessions() as session:
        conversations = ConversationRepository(session)
        messages = MessageRepository(session)
        current = await conversations.current(1, 1)
        closed = await conversations.get(old.id)
        everything = await conversations.list_for_user(1)
        assert await messages.history(old.id) == old_messages
        assert await messages.history(new.id) == []
        assert await conversations.current(1, group) == in_group
        assert await conversations.current(2, group) == neighbour

    assert current == new and new.id != old.id and new.closed_at is None
    assert closed is not None and closed.closed_at is not None
    assert closed.closed_at >= closed.started_at
    assert [conversation.id for conversation in everything] == [old.id, in_group.id, new.id]


async def test_current_opens_one_conversation_even_when_updates_race(
    sessions: Sessions,
) -> None:
    async def open_current() -> int:
        async with sessions() as session:
            conversation = await ConversationRepository(session).current(77, -5)
            await session.commit()
            return conversation.id

    ids = await asyncio.gather(*(open_current() for _ in range(20)))
    async with sessions() as session:
        everything = await ConversationRepository(session).list_for_user(77)
    assert len(set(ids)) == 1
    assert [conversation.id for conversation in everything] == [ids[0]]


async def count_rows_of(engine: AsyncEngine, user_id: int) -> dict[str, int]:
    queries = {
        "users": "SELECT count(*) FROM users WHERE id = :u",
        "conversations": "SELECT count(*) FROM conversations WHERE user_id = :u",
        "messages": "SELECT count(*) FROM messages JOIN conversations c "
        "ON c.id = messages.conversation_id WHERE c.user_id = :u",
        "telegram_messages": "SELECT count(*) FROM telegram_messages t "
        "JOIN messages m ON m.id = t.message_id "
        "JOIN conversations c ON c.id = m.conversation_id WHERE c.user_id = :u",
    }
    return {table: await scalar(engine, sql, u=user_id) for table, sql in queries.items()}


async def test_forget_removes_one_user_entirely_and_nothing_of_another(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    group = -100500
    for user_id in (1, 2):
        await add_user_with_history(sessions, user_id, user_id, ["личное", "ответ"])
        await add_user_with_history(sessions, user_id, group, ["в группе", "ответ"])
        async with sessions() as session:
            await UserRepository(session).set_system_prompt(user_id, f"промпт {user_id}")
            await ConversationRepository(session).reset(user_id, user_id)
            await session.commit()

    async def snapshot(user_id: int) -> tuple[Any, ...]:
        async with sessions() as session:
            conversations = await ConversationRepository(session).list_for_user(user_id)
            messages = MessageRepository(session)
            return (
                await UserRepository(session).get(user_id),
                conversations,
                [await messages.history(conversation.id) for conversation in conversations],
            )

    other_before = await snapshot(2)
    assert await count_rows_of(engine, 1) == {
        "users": 1,
        "conversations": 3,
        "messages": 4,
        "telegram_messages": 4,
    }

    async with sessions() as session:
        await UserRepository(session).forget(1)
        await session.commit()

    assert await count_rows_of(engine, 1) == {
        "users": 0,
        "conversations": 0,
        "messages": 0,
        "telegram_messages": 0,
    }
    # Nothing left anywhere that is not user 2's.
    assert await scalar(engine, "SELECT count(*) FROM messages") == 4
    assert await scalar(engine, "SELECT count(*) FROM telegram_messages") == 4
    assert await snapshot(2) == other_before
    async with sessions() as session:
        assert await StatsRepository(session).totals() == StorageStats(
            users=1, conversations=3, messages=4
        )
        # Forgetting is idempotent, and the user may come back with a clean slate.
        await UserRepository(session).forget(1)
        fresh = await ConversationRepository(session).current(1, 1)
        assert await MessageRepository(session).history(fresh.id) == []


async def test_forgotten_text_is_gone_from_the_database_file(url: str, tmp_path: Path) -> None:
    secret = "СЕКРЕТ-пароль-от-сейфа-" * 20
    engine = create_engine(url)
    try:
        await migrate(engine)
        sessions = create_session_factory(engine)
        await add_user_with_history(sessions, 1, 1, [secret, "ответ"])
        await add_user_with_history(sessions, 2, 2, ["чужое сообщение"])
        async with sessions() as session:
            await UserRepository(session).forget(1)
            await session.commit()
        await checkpoint(engine)  # the bot keeps running: the engine stays open
        files = list((tmp_path / "data").iterdir())
        contents = b"".join(path.read_bytes() for path in files)
    finally:
        await engine.dispose()
    assert "чужое сообщение".encode() in contents
    assert secret[:20].encode() not in contents


# --- concurrency and crashes --------------------------------------------------------------------


async def test_fifty_users_writing_at_once_lose_nothing(sessions: Sessions) -> None:
    turns = 4

    async def chat(user_id: int) -> int:
        conversation_id = 0
        for turn in range(turns):
            async with sessions() as session:
                await UserRepository(session).upsert(
                    user_id, username=None, first_name=f"#{user_id}", language_code=None
                )
                conversation = await ConversationRepository(session).current(user_id, user_id)
                conversation_id = conversation.id
                await MessageRepository(session).add(conversation.id, "user", f"{user_id}:{turn}")
                await session.commit()
            await asyncio.sleep(0)
            async with sessions() as session:
                messages = MessageRepository(session)
                reply = await messages.add(conversation_id, "bot", "", status="pending")
                await messages.update(reply.id, text=f"re {user_id}:{turn}", status="complete")
                await session.commit()
        return conversation_id

    user_ids = range(1000, 1050)
    conversation_ids = await asyncio.gather(*(chat(user_id) for user_id in user_ids))

    async with sessions() as session:
        messages = MessageRepository(session)
        for user_id, conversation_id in zip(user_ids, conversation_ids, strict=True):
            history = await messages.history(conversation_id)
            expected = [
                text
                for turn in range(turns)
                for text in (f"{user_id}:{turn}", f"re {user_id}:{turn}")
            ]
            assert [message.text for message in history] == expected
            assert {message.status for message in history} == {"complete"}
        assert await StatsRepository(session).totals() == StorageStats(
            users=50, conversations=50, messages=50 * turns * 2
        )


def test_a_message_survives_sigkill_of_the_writer(url: str) -> None:
    child = subprocess.Popen(
        [sys.executable, str(Path(storage_child.__file__)), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 60)
        assert ready, "the child never reported storing the message"
        marker, conversation_id, reply_id = child.stdout.readline().split()
        assert marker == storage_child.MARKER, child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    async def next_process() -> tuple[list[MessageRecord], int, MessageRecord | None]:
        engine = create_engine(url)
        try:
            await migrate(engine)  # also proves the killed writer left no lock behind
            async with create_session_factory(engine)() as session:
                history = await MessageRepository(session).history(int(conversation_id))
                interrupted = await MessageRepository(session).mark_pending_as_partial()
                await session.commit()
                reply = await MessageRepository(session).get(int(reply_id))
            return history, interrupted, reply
        finally:
            await engine.dispose()

    history, interrupted, reply = asyncio.run(next_process())
    assert [(m.role, m.text, m.status) for m in history] == [
        ("user", storage_child.USER_TEXT, "complete"),
        ("bot", storage_child.PARTIAL_REPLY, "pending"),  # the uncommitted edit is gone
    ]
    assert history[0].telegram_message_ids == (10,)
    assert interrupted == 1
    assert reply is not None and reply.status == "partial"
    assert reply.text == storage_child.PARTIAL_REPLY


async def test_repositories_never_commit_behind_the_caller(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    conversation, stored = await add_user_with_history(sessions, 1, 1, ["было", "ответ"])
    before = await count_rows_of(engine, 1)
    async with sessions() as session:
        users, conversations = UserRepository(session), ConversationRepository(session)
        messages = MessageRepository(session)
        await users.upsert(2, username="new", first_name=None, language_code=None)
        await users.set_system_prompt(1, "не сохранится")
        await conversations.current(3, 3)
        await conversations.reset(1, 1)
        await messages.add(conversation.id, "user", "не сохранится", telegram_message_ids=[5])
        await messages.update(stored[1].id, text="изменено", status="failed")
        await messages.add(conversation.id, "bot", "", status="pending")
        await messages.mark_pending_as_partial()
        await users.forget(1)
        await session.rollback()  # the caller changes its mind: nothing may have been committed
    async with sessions() as session:
        assert await StatsRepository(session).totals() == StorageStats(1, 1, 2)
        user = await UserRepository(session).get(1)
        assert user is not None and user.system_prompt is None
        assert await ConversationRepository(session).current(1, 1) == conversation
        assert await MessageRepository(session).history(conversation.id) == stored
    assert await count_rows_of(engine, 1) == before


async def test_no_sqlite_call_runs_on_the_event_loop_thread(url: str) -> None:
    """Every statement, the connection set-up included, runs in aiosqlite's worker thread, so
    a slow disk never stalls the bot's other users."""
    loop_thread = threading.get_ident()
    threads: list[tuple[int, str]] = []

    def trace(dbapi_connection: Any, _record: Any) -> None:
        raw = dbapi_connection.driver_connection._conn  # the sqlite3 connection aiosqlite owns
        raw.set_trace_callback(lambda sql: threads.append((threading.get_ident(), sql)))

    engine = create_engine(url)
    event.listen(engine.sync_engine, "connect", trace, insert=True)  # before the pragmas
    try:
        await migrate(engine)
        sessions = create_session_factory(engine)
        await add_user_with_history(sessions, 1, 1, ["раз", "два"])
        async with sessions() as session:
            await MessageRepository(session).history(1)
            await UserRepository(session).forget(1)
            await session.commit()
        await checkpoint(engine)
    finally:
        await engine.dispose()
    statements = [sql for _, sql in threads]
    assert any("journal_mode" in sql for sql in statements), statements
    assert any(sql.startswith("INSERT INTO messages") for sql in statements), statements
    on_loop = [sql for thread, sql in threads if thread == loop_thread]
    assert on_loop == []


# --- the history read ---------------------------------------------------------------------------


async def test_history_is_one_query_served_by_the_index(sqlite_engine: AsyncEngine) -> None:
    engine = sqlite_engine
    sessions = create_session_factory(engine)
    for user_id in range(1, 6):
        await add_user_with_history(sessions, user_id, user_id, [f"m{n}" for n in range(30)])
    async with engine.connect() as conn:
        compiled = history_query(3).compile(
            dialect=conn.dialect, compile_kwargs={"literal_binds": True}
        )
        plan = [row[-1] for row in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")]
    assert any("USING INDEX ix_messages_conversation_id_id" in step for step in plan), plan
    assert not any(step.startswith("SCAN") for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan  # no sort: index order is used

    statements: list[str] = []

    def record(_conn: Connection, _cursor: Any, sql: str, *_args: Any) -> None:
        statements.append(sql)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with sessions() as session:
            history = await MessageRepository(session).history(3)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert [message.text for message in history] == [f"m{n}" for n in range(30)]
    assert len(statements) == 1, statements


# --- bad input ----------------------------------------------------------------------------------


async def test_bad_input_is_refused_before_anything_is_written(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    conversation, _ = await add_user_with_history(sessions, 1, 1, ["ok"])
    cid = conversation.id
    bad_calls: list[tuple[Callable[[AsyncSession], Any], str]] = [
        (lambda s: MessageRepository(s).add(cid, "system", "x"), "role must be one of"),  # type: ignore[arg-type]
        (lambda s: MessageRepository(s).add(cid, "bot", "x", status="done"), "status"),  # type: ignore[arg-type]
        (lambda s: MessageRepository(s).add(cid, "user", b"bytes"), "must be a string"),  # type: ignore[arg-type]
        (
            lambda s: MessageRepository(s).add(cid, "user", "я" * (MAX_TEXT_CHARS + 1)),
            "at most 1,000,000",
        ),
        (lambda s: MessageRepository(s).add(cid, "user", "x", n_tokens=-1), "token count"),
        (
            lambda s: MessageRepository(s).add(cid, "user", "x", telegram_message_ids="12"),  # type: ignore[arg-type]
            "not a string",
        ),
        (lambda s: MessageRepository(s).add(cid + 99, "user", "x"), "does not exist"),
        (lambda s: MessageRepository(s).update(12345, text="x"), "Message 12345 does not exist"),
        (lambda s: MessageRepository(s).update(1, status="weird"), "status"),  # type: ignore[arg-type]
        (
            lambda s: UserRepository(s).upsert(
                2**63, username=None, first_name=None, language_code=None
            ),
            "64-bit",
        ),
        (lambda s: ConversationRepository(s).current(1, True), "64-bit"),
    ]
    for call, message in bad_calls:
        async with sessions() as session:
            with pytest.raises(StorageError, match=message):
                await call(session)
            await session.commit()  # even a caller that commits anyway writes nothing
    async with sessions() as session:
        assert await StatsRepository(session).totals() == StorageStats(1, 1, 1)
        assert [m.text for m in await MessageRepository(session).history(cid)] == ["ok"]


# --- migrations ---------------------------------------------------------------------------------


def revisions() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def test_migrate_builds_an_empty_database_and_is_idempotent(url: str) -> None:
    engine = create_engine(url)
    try:
        assert await current_revision(engine) is None
        await migrate(engine)
        await migrate(engine)
        assert await current_revision(engine) == revisions()[-1]
        tables = await scalar(
            engine,
            "SELECT group_concat(name) FROM (SELECT name FROM sqlite_master "
            "WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name)",
        )
        assert tables == (
            "alembic_version,conversations,engine_slots,messages,processed_updates,"
            "received_messages,stop_requests,telegram_messages,username_bindings,users"
        )
    finally:
        await engine.dispose()


async def test_a_database_from_the_first_migration_keeps_its_rows(url: str) -> None:
    assert revisions()[0] == "0001"
    old = create_engine(url)
    try:
        await migrate(old, "0001")
        assert await current_revision(old) == "0001"
        conversation, stored = await add_user_with_history(
            create_session_factory(old), 1, 1, ["до обновления 🙂", "ответ\x00"]
        )
    finally:
        await old.dispose()

    upgraded = create_engine(url)  # the next start of an upgraded bot
    try:
        await migrate(upgraded)
        await migrate(upgraded)
        assert await current_revision(upgraded) == revisions()[-1]
        async with create_session_factory(upgraded)() as session:
            assert await MessageRepository(session).history(conversation.id) == stored
            assert await ConversationRepository(session).current(1, 1) == conversation
    finally:
        await upgraded.dispose()


async def test_a_failing_migration_leaves_the_database_untouched(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_upgrade = storage.database._upgrade

    def upgrade_then_fail(connection: Connection, revision: str) -> None:
        real_upgrade(connection, revision)
        raise RuntimeError("disk full half-way")

    monkeypatch.setattr(storage.database, "_upgrade", upgrade_then_fail)
    engine = create_engine(url)
    try:
        with pytest.raises(RuntimeError, match="half-way"):
            await migrate(engine)
        assert await scalar(engine, "SELECT count(*) FROM sqlite_master") == 0
        assert await scalar(engine, "PRAGMA foreign_keys") == 1
    finally:
        await engine.dispose()


async def test_migrations_match_the_orm_tables(engine: AsyncEngine) -> None:
    def differences(metadata: sa.MetaData) -> Callable[[Connection], list[Any]]:
        def compare(connection: Connection) -> list[Any]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))

        return compare

    async with engine.connect() as conn:
        assert await conn.run_sync(differences(Base.metadata)) == []
        # The comparison does see drift: a column the migrations never created.
        drifted = sa.MetaData()
        for table in Base.metadata.tables.values():
            table.to_metadata(drifted)
        drifted.tables["messages"].append_column(sa.Column("extra", sa.Integer()))
        found = await conn.run_sync(differences(drifted))
    assert [diff[0] for diff in found] == ["add_column"]


async def test_database_errors_do_not_quote_users_text_unless_asked(tmp_path: Path) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    secret = "мой пароль от почты 12345"
    for hide, quoted in ((True, False), (False, True)):
        engine = create_engine(
            f"sqlite+aiosqlite:///{tmp_path / f'{hide}.db'}", hide_parameters=hide
        )
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE m (body TEXT UNIQUE)"))
                await conn.execute(text("INSERT INTO m VALUES (:b)"), {"b": secret})
            with pytest.raises(IntegrityError) as info:
                async with engine.begin() as conn:
                    await conn.execute(text("INSERT INTO m VALUES (:b)"), {"b": secret})
            assert "UNIQUE constraint failed" in str(info.value)
            assert (secret in str(info.value)) is quoted
        finally:
            await engine.dispose()
