"""The slot ledger on PostgreSQL: two ledgers with their own database engines (as two bot
processes would have) share one server's slots. Skipped without DOMOVOY_TEST_POSTGRES_URL."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from models.engines import SlotLedger
from storage.database import create_engine, migrate
from storage.slot_ledger import PostgresSlotLedger

POSTGRES_URL = os.environ.get("DOMOVOY_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(
    not POSTGRES_URL, reason="set DOMOVOY_TEST_POSTGRES_URL=postgresql+asyncpg://... (wiped)"
)
SERVER = "http://gpu-1:8080"


@pytest.fixture
async def ledgers() -> AsyncIterator[tuple[PostgresSlotLedger, PostgresSlotLedger]]:
    assert POSTGRES_URL
    setup = create_engine(POSTGRES_URL)
    async with setup.begin() as conn:
        await conn.exec_driver_sql("SET lock_timeout = '10s'")
        await conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
        await conn.exec_driver_sql("CREATE SCHEMA public")
    await migrate(setup)
    await setup.dispose()
    engines = [create_engine(POSTGRES_URL), create_engine(POSTGRES_URL)]
    first, second = (PostgresSlotLedger(engine, poll=0.01) for engine in engines)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()
    for engine in engines:
        await engine.dispose()


async def test_a_conversation_finds_its_slot_again_in_another_process(
    ledgers: tuple[PostgresSlotLedger, PostgresSlotLedger],
) -> None:
    a, b = ledgers
    protocol: SlotLedger = a  # mypy: it is a SlotLedger, structurally
    async with protocol.claim(SERVER, 2, "1:1") as claim:
        assert (claim.slot, claim.cached) == (0, False)
    async with a.claim(SERVER, 2, "2:2") as claim:
        assert (claim.slot, claim.cached) == (1, False)  # a slot never used comes first
    async with b.claim(SERVER, 2, "1:1") as claim:
        assert (claim.slot, claim.cached) == (0, True)  # recorded by the other process
    # Least recently used: slot 1 now; the conversation that had it loses it.
    async with b.claim(SERVER, 2, "3:3") as claim:
        assert (claim.slot, claim.cached) == (1, False)
    async with a.claim(SERVER, 2, "2:2") as claim:
        assert (claim.slot, claim.cached) == (0, False)  # its old slot serves another now


async def test_a_busy_own_slot_gives_way_to_a_free_one(
    ledgers: tuple[PostgresSlotLedger, PostgresSlotLedger],
) -> None:
    a, b = ledgers
    async with a.claim(SERVER, 2, "1:1") as first, b.claim(SERVER, 2, "1:1") as second:
        assert first.slot != second.slot and not second.cached


async def test_competing_processes_never_share_a_slot(
    ledgers: tuple[PostgresSlotLedger, PostgresSlotLedger],
) -> None:
    slots = 3
    in_use: dict[int, str] = {}
    served: list[int] = []
    most = 0

    async def request(ledger: PostgresSlotLedger, key: str) -> None:
        nonlocal most
        async with ledger.claim(SERVER, slots, key) as claim:
            assert claim.slot not in in_use, f"slot {claim.slot} given twice"
            in_use[claim.slot] = key
            most = max(most, len(in_use))
            await asyncio.sleep(0.02)
            del in_use[claim.slot]
            served.append(claim.slot)

    await asyncio.gather(*(request(ledgers[i % 2], f"{i % 5}:{i % 5}") for i in range(24)))
    assert len(served) == 24
    assert most == slots  # all slots were used at once, never more


async def test_release_owner_forgets_the_conversation_everywhere(
    ledgers: tuple[PostgresSlotLedger, PostgresSlotLedger],
) -> None:
    a, b = ledgers
    async with a.claim(SERVER, 2, "1:1"):
        pass
    async with a.claim("http://gpu-2:8080", 1, "1:1"):
        pass
    assert await b.release_owner("1:1") == [(SERVER, 0), ("http://gpu-2:8080", 0)]
    assert await b.release_owner("1:1") == []
    async with a.claim(SERVER, 2, "1:1") as claim:
        assert not claim.cached  # its cells may hold nothing of it any more


async def test_a_slot_held_by_a_dead_process_comes_free(
    ledgers: tuple[PostgresSlotLedger, PostgresSlotLedger],
) -> None:
    a, b = ledgers
    holding = a.claim(SERVER, 1, "1:1")
    claim = await holding.__aenter__()
    assert claim.slot == 0
    waiting = asyncio.create_task(b.claim(SERVER, 1, "2:2").__aenter__())
    await asyncio.sleep(0.1)
    assert not waiting.done()  # the only slot is busy
    await a._locks.abandon()  # the process holding it dies
    async with asyncio.timeout(5):
        taken = await waiting
    assert (taken.slot, taken.cached) == (0, False)
