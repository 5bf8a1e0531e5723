"""Two real bot processes in webhook mode on one PostgreSQL, behind the fake Bot API server's
load balancer: 5 users send 10 messages each, concurrently, while updates are delivered twice
to the other process and one process is killed (SIGKILL) in the middle of a reply, then
started again. Checked from the database and from what the fake Telegram saw: every message
stored once and answered once, in order per conversation, by both processes.

Skipped without DOMOVOY_TEST_POSTGRES_URL (wiped; CI sets it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fake_telegram import FakeTelegram
from fake_telegram_webhook import Delivery
from shown import shown as shown_text
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_bot_webhook import fresh_postgres
from tiny_model import TinyModelShape, build_tiny_gguf
from webhook_bots import BotProcess, set_webhook_calls, webhook_bots

from bot.telegram.texts import RU
from storage.column_types import unescape_text
from storage.database import create_engine

POSTGRES_URL = os.environ.get("DOMOVOY_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(
    not POSTGRES_URL, reason="set DOMOVOY_TEST_POSTGRES_URL=postgresql+asyncpg://... (wiped)"
)

USERS = [3001, 3002, 3003, 3004, 3005]
PER_USER = 10
DUPLICATES = 8  # updates delivered a second time, spread over the run
# About 150 tokens a second on one thread: a reply of up to 96 tokens streams for most of a
# second, long enough to be caught mid-reply through its drafts (every 0.2 s).
SHAPE = TinyModelShape(n_embd=512, n_head=8, n_layer=12, n_ff=2048)
SETTINGS = {
    "MAX_NEW_TOKENS": "96",
    "STREAM_EDIT_INTERVAL": "0.2",
    "CHAT_MESSAGE_INTERVAL": "0.1",
    "N_THREADS": "1",
    "PARALLEL": "2",
}
ALL_ANSWERED_WITHIN = 150.0  # seconds, from the first message

SNAPSHOT = text(
    "SELECT c.user_id, m.id, m.role, m.status, m.text FROM messages m "
    "JOIN conversations c ON c.id = m.conversation_id ORDER BY m.id"
)


@dataclass(frozen=True)
class Row:
    user_id: int
    id: int
    role: str
    status: str
    text: str


def said(user: int, n: int) -> str:
    return f"{user}: сообщение {n}"


def split(rows: list[Row], user: int) -> tuple[list[Row], list[Row]]:
    mine = [r for r in rows if r.user_id == user]
    return [r for r in mine if r.role == "user"], [r for r in mine if r.role == "bot"]


async def snapshot(db: AsyncEngine) -> list[Row]:
    async with db.connect() as conn:  # one statement: a consistent picture
        rows = (await conn.execute(SNAPSHOT)).all()
    # Raw SQL reads the text as stored: undo storage.column_types' escapes (NUL, \x1a, ...).
    return [Row(*row[:4], unescape_text(row[4])) for row in rows]


def line_violations(rows: list[Row], cut: set[int]) -> list[str]:
    """What must hold at every instant, per conversation: the replies opened so far answer
    exactly the oldest messages (those no longer `pending`), and at most one reply, the
    newest, is being written. `cut`: replies a killed process left, `pending` until a sweep
    of the other keeps them as `partial` (its next reply may start before that)."""
    found = []
    for user in USERS:
        questions, replies = split(rows, user)
        answered = [q.status != "pending" for q in questions]
        if answered != [True] * len(replies) + [False] * (len(questions) - len(replies)):
            found.append(f"{user}: {len(replies)} replies for {[q.status for q in questions]}")
        written = [r for r in replies if r.status == "pending" and r.id not in cut]
        if written and (len(written) > 1 or written[0] != replies[-1]):
            found.append(f"{user}: two replies written at once: {[r.status for r in replies]}")
        if any(q.id > r.id for q, r in zip(questions, replies, strict=False)):
            found.append(f"{user}: a reply opened before its message was stored")
    return found


@dataclass
class Watch:
    """Snapshots of the database taken all through the run."""

    db: AsyncEngine
    snapshots: list[list[Row]] = field(default_factory=list)

    @property
    def latest(self) -> list[Row]:
        return self.snapshots[-1] if self.snapshots else []

    async def run(self) -> None:
        while True:
            self.snapshots.append(await snapshot(self.db))
            await asyncio.sleep(0.02)

    def violations(self, cut: set[int]) -> list[str]:
        return [found for rows in self.snapshots for found in line_violations(rows, cut)]


@dataclass
class Killed:
    user: int
    index: int  # which reply of the conversation (0-based)
    reply: Row  # the reply row as it was just before the kill
    drafts: list[str]  # what the chat was shown of it


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("cluster") / "slow.gguf", shape=SHAPE)


@pytest.fixture
async def db() -> AsyncIterator[AsyncEngine]:
    assert POSTGRES_URL is not None
    await fresh_postgres(POSTGRES_URL)
    engine = create_engine(POSTGRES_URL)
    yield engine
    await engine.dispose()


async def send_as_user(tg: FakeTelegram, user: int, seed: int, sent: dict[int, str]) -> None:
    """One user types their messages one after another, not waiting for the answers."""
    rng = random.Random(seed)
    for n in range(1, PER_USER + 1):
        update = tg.push_message(user, said(user, n))
        sent[update["update_id"]] = said(user, n)
        await asyncio.sleep(rng.uniform(0.2, 1.2))


async def inject_duplicates(tg: FakeTelegram) -> None:
    """As Telegram does when an acknowledgement is lost: the update comes again, here to the
    other process."""
    for _ in range(DUPLICATES):
        tg.duplicate_next(1)
        await asyncio.sleep(0.7)


def first_backend(deliveries: list[Delivery], update_id: int) -> str:
    """The process that took the update on (stored its message, and so answers it)."""
    return next(d.url for d in deliveries if d.ok and d.update_id == update_id and not d.duplicate)


async def kill_mid_reply(
    tg: FakeTelegram, watch: Watch, victim: BotProcess, sent: dict[int, str]
) -> Killed:
    """SIGKILL `victim` while it streams a reply: a chat whose message went to it has its
    reply row `pending` and is being shown drafts of it (after its previous answer)."""

    def streaming() -> Killed | None:
        by_text = {text: update_id for update_id, text in sent.items()}
        rows = watch.latest
        if sum(r.role == "bot" and r.status != "pending" for r in rows) < 10:
            return None  # both processes have served a while first
        for user in USERS:
            questions, replies = split(rows, user)
            if not replies or replies[-1].status != "pending":
                continue
            k = len(replies) - 1
            update_id = by_text.get(questions[k].text)
            if update_id is None or first_backend(tg.webhook_deliveries, update_id) != victim.url:
                continue
            shown = tg.sent_messages(user)
            if len(shown) != k:
                continue  # the previous reply is not in the chat yet
            since = shown[-1].sent_at if shown else 0.0
            drafts = [e.text or "" for e in tg.drafts(user) if e.at > since]
            if len(drafts) >= 1:
                return Killed(user, k, replies[-1], drafts)
        return None

    found = await tg.wait_for(streaming, timeout=90)
    assert victim.process is not None
    victim.process.send_signal(signal.SIGKILL)
    await victim.process.wait()
    await victim.stop()  # closes its log
    return found


async def all_answered(tg: FakeTelegram, watch: Watch) -> None:
    """Every message has its reply stored, and every chat shows as many messages (the
    assertions after this say which, if the last wait runs out)."""

    def stored() -> bool:
        rows = watch.latest
        return (
            sum(r.role == "user" for r in rows) == len(USERS) * PER_USER
            and sum(r.role == "bot" and r.status != "pending" for r in rows)
            == len(USERS) * PER_USER
        )

    await tg.wait_for(stored, timeout=ALL_ANSWERED_WITHIN)
    with contextlib.suppress(AssertionError):
        await tg.wait_for(lambda: all(len(tg.texts(u)) >= PER_USER for u in USERS), 15)


def shown(row: Row, notes: list[str]) -> str:
    return shown_text(row.text, notes)


async def test_two_processes_answer_fifty_messages_once_in_order_through_a_kill(
    model: Path, db: AsyncEngine, tmp_path: Path
) -> None:
    assert POSTGRES_URL is not None
    sent: dict[int, str] = {}
    watch = Watch(db)
    async with FakeTelegram(local_bot_api=True) as tg:
        tg.webhook_backoff = (0.1, 2.0, 0.5)
        async with webhook_bots(
            tg,
            2,
            model=model,
            folder=tmp_path,
            database_url=POSTGRES_URL,
            allowed_users=",".join(map(str, USERS)),
            extra=SETTINGS,
        ) as bots:
            watcher = asyncio.create_task(watch.run())
            try:
                users = [
                    asyncio.create_task(send_as_user(tg, user, seed, sent))
                    for seed, user in enumerate(USERS)
                ]
                duplicates = asyncio.create_task(inject_duplicates(tg))
                killed = await kill_mid_reply(tg, watch, bots[0], sent)
                await asyncio.sleep(2.0)  # the other process carries on alone for a while
                webhooks_set = len(set_webhook_calls(tg))
                await bots[0].start()
                await tg.wait_for(lambda: len(set_webhook_calls(tg)) > webhooks_set, 60)
                await asyncio.gather(*users, duplicates)
                await all_answered(tg, watch)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            for bot in bots:
                assert await bot.stop() == 0, bot.log()[-3000:]
        rows = await snapshot(db)
        deliveries = list(tg.webhook_deliveries)
        chats = {user: tg.texts(user) for user in USERS}
        draft_texts = {user: [e.text or "" for e in tg.drafts(user)] for user in USERS}

    # Every message stored exactly once, in the order its user sent it.
    assert len(sent) == len(USERS) * PER_USER
    for user in USERS:
        questions, replies = split(rows, user)
        assert [q.text for q in questions] == [said(user, n) for n in range(1, PER_USER + 1)]
        assert all(q.status == "complete" for q in questions)
        # Exactly one reply per message, each opened after its message was stored.
        assert len(replies) == PER_USER, (user, [r.status for r in replies])
    # In order at every instant of the run (see line_violations), and at the end.
    cut = {r.id for r in rows if r.role == "bot" and r.status == "partial"}
    violations = watch.violations(cut) + line_violations(rows, set())
    assert not violations, violations[:10]

    # The kill: that reply was being written by the killed process and is kept as written
    # (`partial`); every other reply is complete. The chat shows it with its note.
    _, victim_replies = split(rows, killed.user)
    kept = victim_replies[killed.index]
    assert killed.reply.status == "pending" and kept.id == killed.reply.id
    assert kept.status == "partial"
    assert any(killed.drafts), "the reply was streaming when the process was killed"
    assert any(d.startswith(kept.text.strip()) for d in draft_texts[killed.user])
    by_text = {text: update_id for update_id, text in sent.items()}
    for user in USERS:
        questions, replies = split(rows, user)
        for question, reply in zip(questions, replies, strict=True):
            if reply.status == "partial":  # only a reply of the killed process may be cut
                assert first_backend(deliveries, by_text[question.text]) == bots[0].url
            else:
                assert reply.status == "complete", (user, reply)
        # What reached the chat: one message per reply, in the order of the replies.
        notes = {r.id: [RU.reply_interrupted] if r.status == "partial" else [] for r in replies}
        expected = [shown(r, notes[r.id]) for r in replies]
        assert chats[user] == expected, (
            user,
            [(r.status, r.text[:12]) for r in replies],
            [text[:12] for text in chats[user]],
        )

    # The duplicates reached the other process and changed nothing (counted above).
    again = [d for d in deliveries if d.duplicate and d.ok]
    assert len(again) >= DUPLICATES - 1
    for duplicate in again:
        first = next(d for d in deliveries if d.update_id == duplicate.update_id and d.ok)
        tries = [d for d in deliveries if d.update_id == duplicate.update_id and d.duplicate]
        # Sent to the other process; back to the first one only when the other did not
        # answer (it was the killed one: the retry goes to the live process).
        assert tries[0].url != first.url
        assert duplicate.url != first.url or not tries[0].ok

    # Both processes took on messages, before and after the kill.
    served = {d.url for d in deliveries if d.ok and not d.duplicate}
    assert served == {bot.url for bot in bots}
