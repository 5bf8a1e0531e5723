"""A database for the migration tests: a SQLite file, or the wiped PostgreSQL of
DOMOVOY_TEST_POSTGRES_URL (skipped without it); and alembic's downgrade on a connection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from storage.database import alembic_config, create_engine

POSTGRES_URL = os.environ.get("DOMOVOY_TEST_POSTGRES_URL")


def downgrade(connection: sa.Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


async def database_url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'domovoy.db'}"
    if not POSTGRES_URL:
        pytest.skip("set DOMOVOY_TEST_POSTGRES_URL=postgresql+asyncpg://... (wiped) to run")
    engine = create_engine(POSTGRES_URL)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
        await conn.exec_driver_sql("CREATE SCHEMA public")
    await engine.dispose()
    return POSTGRES_URL
