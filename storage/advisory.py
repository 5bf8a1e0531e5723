"""PostgreSQL session-level advisory locks, held on one connection of their own.

A lock taken here lasts until it is released or the connection ends: when a bot process dies,
PostgreSQL releases everything it held, which is how the other processes tell a message or a
reply left by a dead process from one a live process is working on.

Key spaces (PostgreSQL keeps the one-bigint and the two-int keys apart):
- a stored message or reply row: the bigint key is its id (ids are unique across both roles);
- a conversation line and an engine slot: two int keys, a namespace and a 32-bit hash. Two
  names sharing a hash only share a lock: less parallelism, never a broken order.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger = logging.getLogger(__name__)

CONVERSATION_SPACE = 1
SLOT_SPACE = 2
UPDATE_SPACE = 3
MIGRATION_SPACE = 4  # schema upgrades (storage.database.migrate), one process at a time

LockKey = int | tuple[int, int]


def _hash32(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), signed=True)


def row_lock(row_id: int) -> LockKey:
    return row_id


def conversation_lock(key: str) -> LockKey:
    return (CONVERSATION_SPACE, _hash32(key))


def update_lock(update_id: int) -> LockKey:
    return (UPDATE_SPACE, _hash32(str(update_id)))


def slot_lock(server: str, slot: int) -> LockKey:
    return (SLOT_SPACE, _hash32(f"{server}#{slot}"))


def _args(key: LockKey) -> tuple[str, dict[str, int]]:
    if isinstance(key, tuple):
        return ":a, :b", {"a": key[0], "b": key[1]}
    return ":a", {"a": key}


class AdvisoryLocks:
    """The process's advisory locks. Calls are serialized: one connection runs one statement
    at a time. Locks are only ever tried, never waited for on the connection, so a wait for one
    lock never holds up the release of another."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._busy = asyncio.Lock()

    async def open(self) -> None:
        conn = await self._engine.connect()
        # Autocommit: a session-level lock outlives transactions, and an idle transaction
        # would hold back vacuum for the life of the process.
        self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")

    async def close(self) -> None:
        """Ends the connection: PostgreSQL releases whatever is still held."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def abandon(self) -> None:
        """Drop the connection without a word, as a killed process would (tests)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.invalidate()

    async def try_lock(self, key: LockKey) -> bool:
        sql, params = _args(key)
        return bool(await self._scalar(f"SELECT pg_try_advisory_lock({sql})", params))

    async def unlock(self, key: LockKey) -> None:
        if self._conn is None:
            return  # the connection is gone, and every lock with it
        sql, params = _args(key)
        if not await self._scalar(f"SELECT pg_advisory_unlock({sql})", params):
            logger.warning("an advisory lock was released that was not held")

    async def backend_pid(self) -> int:
        pid: int = await self._scalar("SELECT pg_backend_pid()", {})
        return pid

    async def _scalar(self, sql: str, params: dict[str, int]) -> Any:
        async with self._busy:
            if self._conn is None:
                raise RuntimeError("the advisory lock connection is closed")
            return (await self._conn.execute(text(sql), params)).scalar()
