"""Migration 0004 on SQLite and PostgreSQL: an existing database keeps its rows, gains the
tables of several processes, and goes back to 0003 cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from migration_db import database_url, downgrade
from sqlalchemy.exc import IntegrityError

from storage.database import create_engine, create_session_factory, migrate
from storage.repositories import ConversationRepository, MessageRepository, UserRepository
from storage.repositories.shared import ReceivedRepository, UpdateRepository


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return await database_url(request.param, tmp_path)


async def test_0004_keeps_rows_and_adds_the_shared_tables(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine, "0003")
        sessions = create_session_factory(engine)
        async with sessions() as session:
            await UserRepository(session).upsert(
                7, username="u", first_name="И", language_code="ru"
            )
            conversation = await ConversationRepository(session).current(7, 7)
            old = await MessageRepository(session).add(
                conversation.id, "user", "до обновления", telegram_message_ids=[5]
            )
            await session.commit()
        await migrate(engine)
        async with sessions() as session:
            assert await MessageRepository(session).history(conversation.id) == [old]
            assert await UpdateRepository(session).record(100)
            assert not await UpdateRepository(session).record(100)
            received = ReceivedRepository(session)
            assert await received.record(7, 5, old.id)
            assert not await received.record(7, 5, old.id)  # the key refuses a second one
            await session.commit()
        async with engine.connect() as conn:
            with pytest.raises(IntegrityError):  # a message that does not exist
                await conn.execute(
                    sa.text(
                        "INSERT INTO received_messages (chat_id, telegram_message_id, "
                        "message_id) VALUES (1, 1, 999999)"
                    )
                )
                await conn.commit()
        async with engine.connect() as conn:
            await conn.run_sync(downgrade, "0003")
            await conn.commit()
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert "processed_updates" not in tables and "engine_slots" not in tables
        assert "messages" in tables
    finally:
        await engine.dispose()


async def test_processes_starting_together_migrate_one_at_a_time(url: str) -> None:
    # Several bot processes start at once on one database: each runs the migrations.
    engines = [create_engine(url) for _ in range(3)]
    try:
        async with asyncio.timeout(60):  # without the lock, concurrent DDL can also deadlock
            await asyncio.gather(*(migrate(engine) for engine in engines))
        async with engines[0].connect() as conn:
            version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).all()
        assert len(version) == 1
    finally:
        for engine in engines:
            await engine.dispose()
