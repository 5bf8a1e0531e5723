"""Engine, sessions and schema migrations.

Everything SQLite-specific lives in this module; the rest of storage/ is portable SQL, so
DATABASE_URL may point at PostgreSQL (postgresql+asyncpg://...) as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from storage.advisory import MIGRATION_SPACE
from storage.errors import StorageError

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# A writer waits this long for another one before giving up; generation never holds a
# transaction open, so real waits are milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 15_000


def create_engine(url: str, *, hide_parameters: bool = True) -> AsyncEngine:
    """An async engine for `url`; for SQLite the file's folder is created and the connection
    tuned for a long-running service (WAL, foreign keys, busy timeout, synchronous=NORMAL).

    With `hide_parameters`, error messages do not quote statement parameters, which hold
    users' message text and would otherwise reach the logs."""
    try:
        sa_url = make_url(url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError, ValueError, ...
        raise StorageError(f"DATABASE_URL {url!r} is not a valid SQLAlchemy URL.") from exc
    if sa_url.get_backend_name() != "sqlite":
        return create_async_engine(sa_url, pool_pre_ping=True, hide_parameters=hide_parameters)
    sa_url = _prepare_sqlite_file(sa_url)
    engine = create_async_engine(
        sa_url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        hide_parameters=hide_parameters,
    )
    event.listen(engine.sync_engine, "connect", _configure_sqlite_connection)
    return engine


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision` (alembic upgrade); cheap when it is already there."""
    async with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            await _migrate_sqlite(conn, revision)
        else:
            # Several bot processes start at once on one PostgreSQL: one migrates, the others
            # wait for it and then find the schema current. The lock ends with the transaction.
            await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_SPACE}, 0)")
            await conn.run_sync(_upgrade, revision)
            await conn.commit()


async def checkpoint(engine: AsyncEngine) -> None:
    """SQLite only (a no-op elsewhere): fold the write-ahead log into the database file and empty
    it. Call after /forget so deleted text, already zeroed by secure_delete, does not linger in
    the log either."""
    if engine.dialect.name != "sqlite":
        return
    async with engine.connect() as conn:
        # One row: (busy, log frames, checkpointed frames).
        result = (await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).one()
    if result[0]:
        logger.warning("SQLite checkpoint was blocked by a reader; the log is emptied later")


def alembic_config() -> Config:
    """Alembic configuration pointing at the migrations shipped inside the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def _migrate_sqlite(conn: AsyncConnection, revision: str) -> None:
    # Rebuilding a table (alembic batch mode) drops the old one, and with foreign keys on that
    # drop would cascade into every child row; the pragma only changes outside a transaction.
    await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
    try:
        # The driver would only open a transaction at the first INSERT, leaving the DDL before
        # it unprotected; IMMEDIATE also keeps a second process from migrating at the same time.
        await conn.exec_driver_sql("BEGIN IMMEDIATE")
        await conn.run_sync(_upgrade, revision)
        broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
        if broken:
            raise StorageError(
                f"Migration to {revision} left {len(broken)} rows pointing at missing parents; "
                "nothing was changed."
            )
        await conn.commit()
    finally:
        # This connection ran without foreign keys: never hand it back to the pool.
        await conn.invalidate()


def _prepare_sqlite_file(url: URL) -> URL:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return url
    path = Path(database).expanduser()
    make_private_dir(path.parent)
    # The file holds people's conversations: owner only, whatever the umask. SQLite gives its
    # -wal and -shm files the database file's permissions, so creating it first covers them.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            if name.stat().st_mode & 0o077:
                name.chmod(0o600)  # left readable by an older version
        except FileNotFoundError:
            continue
        except OSError as exc:  # not the owner, a read-only file system: say so, go on
            logger.warning("%s stays readable by others: %s", name, exc)
    return url.set(database=str(path))


def make_private_dir(path: Path) -> None:
    """Create `path` and any missing parents as 0700 (an umask can only take bits away from
    mkdir's mode, but an odd one like 0277 would take the owner's too). Existing folders are
    left as they are: they may be shared on purpose, like /tmp."""
    missing: list[Path] = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process was first
            folder.mkdir(mode=0o700)
            folder.chmod(0o700)


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        mode = cursor.fetchone()[0]
        if str(mode).lower() not in ("wal", "memory"):
            logger.warning(
                "SQLite refused WAL journal mode (got %s); writers will block readers", mode
            )
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # With WAL, NORMAL survives a crash or kill -9 of the process; only an OS crash or
        # power cut can lose the last commits.
        cursor.execute("PRAGMA synchronous=NORMAL")
        # /forget must remove text from the file itself, not just unlink it from the b-tree.
        cursor.execute("PRAGMA secure_delete=ON")
    finally:
        cursor.close()
