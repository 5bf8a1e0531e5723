"""The username bindings behind access by @username, on SQLite and (when available) PostgreSQL."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.database import create_engine, create_session_factory, migrate
from storage.username_bindings import UsernameBindingRepository

POSTGRES_URL = os.environ.get("DOMOVOY_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'domovoy.db'}"
    elif POSTGRES_URL:
        url = POSTGRES_URL
        wipe = create_engine(url)
        async with wipe.begin() as conn:
            await conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
            await conn.exec_driver_sql("CREATE SCHEMA public")
        await wipe.dispose()
    else:
        pytest.skip("set DOMOVOY_TEST_POSTGRES_URL=postgresql+asyncpg://... (wiped) to run")
    engine = create_engine(url)
    await migrate(engine)
    yield engine
    await engine.dispose()


async def test_the_first_account_keeps_the_name(engine: AsyncEngine) -> None:
    sessions = create_session_factory(engine)
    async with sessions() as session:
        bindings = UsernameBindingRepository(session)
        assert await bindings.holder("friend") is None
        assert await bindings.bind("@Friend", 11) == 11
        assert await bindings.bind("friend", 22) == 11  # taken: the first holder is kept
        assert await bindings.bind("other", 11) == 11
        await session.commit()
    async with sessions() as session:
        bindings = UsernameBindingRepository(session)
        assert await bindings.names_of(11, ["friend", "OTHER", "third"]) == {"friend", "other"}
        assert await bindings.names_of(22, ["friend", "other"]) == frozenset()
        assert await bindings.names_of(11, []) == frozenset()


async def test_two_accounts_racing_for_a_name_agree_on_one_winner(engine: AsyncEngine) -> None:
    sessions = create_session_factory(engine)

    async def claim(user_id: int) -> int:
        async with sessions() as session:
            holder = await UsernameBindingRepository(session).bind("contested", user_id)
            await session.commit()
        async with sessions() as session:  # what was committed, not what this one tried
            final = await UsernameBindingRepository(session).holder("contested")
        assert final is not None
        return final if holder == final else -1

    results = await asyncio.gather(*(claim(user_id) for user_id in (1, 2, 3, 4)))
    assert len(set(results)) == 1 and results[0] in (1, 2, 3, 4)
