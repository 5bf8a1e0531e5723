"""Several conversations per user and chat, and migration 0003, on real SQLite files."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from bot.core.turn import to_turns
from storage.database import create_engine, create_session_factory, migrate
from storage.repositories import ConversationRepository, MessageRepository, UserRepository


def sqlite_url(folder: Path) -> str:
    return f"sqlite+aiosqlite:///{folder / 'domovoy.db'}"


async def test_migration_0003_keeps_rows_and_allows_replaced(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    old = create_engine(url)
    try:
        await migrate(old, "0002")
        sessions = create_session_factory(old)
        async with sessions() as session:
            await UserRepository(session).upsert(
                1, username="u", first_name="И", language_code="ru"
            )
            conversation = await ConversationRepository(session).current(1, 1)
            before = await MessageRepository(session).add(conversation.id, "user", "до 🙂")
            await session.commit()
        with pytest.raises(IntegrityError):  # 0002 does not know 'replaced'
            async with old.begin() as conn:
                await conn.execute(sa.text("UPDATE messages SET status = 'replaced'"))
    finally:
        await old.dispose()
    new = create_engine(url)
    try:
        await migrate(new)
        async with create_session_factory(new)() as session:
            messages = MessageRepository(session)
            assert await messages.history(conversation.id) == [before]
            reply = await messages.add(conversation.id, "bot", "старый ответ")
            await messages.update(reply.id, status="replaced")
            await session.commit()
            history = await messages.history(conversation.id)
            assert [r.status for r in history] == ["complete", "replaced"]
            assert [t.content for t in to_turns(history, history[-1].id)] == ["до 🙂"]
        with pytest.raises(IntegrityError):
            async with new.begin() as conn:
                await conn.execute(sa.text("UPDATE messages SET status = 'junk'"))
    finally:
        await new.dispose()


async def test_switch_list_and_delete_conversations(tmp_path: Path) -> None:
    engine = create_engine(sqlite_url(tmp_path))
    try:
        await migrate(engine)
        sessions = create_session_factory(engine)
        async with sessions() as session:
            repo, messages = ConversationRepository(session), MessageRepository(session)
            await UserRepository(session).upsert(
                1, username="u", first_name="И", language_code="ru"
            )
            first = await repo.current(1, 1)
            await messages.add(first.id, "user", "Про котов")
            second = await repo.reset(1, 1)
            await messages.add(second.id, "user", "Про лис")
            await repo.reset(1, 1)  # an empty third one: not listed
            other = await repo.current(2, 2)
            await messages.add(other.id, "user", "чужой")
            await session.commit()

            listed = await repo.recent(1, 1, 10)
            assert [(s.id, s.first_message, s.current) for s in listed] == [
                (second.id, "Про лис", False),
                (first.id, "Про котов", False),
            ]
            assert await repo.switch(1, 1, first.id)
            assert not await repo.switch(1, 1, other.id)  # someone else's
            await session.commit()
            assert (await repo.current(1, 1)).id == first.id
            assert [s.current for s in await repo.recent(1, 1, 10)] == [False, True]

            assert not await repo.delete(1, 1, other.id)
            assert await repo.delete(1, 1, second.id)
            await session.commit()
            assert [s.id for s in await repo.recent(1, 1, 10)] == [first.id]
            assert await messages.history(second.id) == []
            assert await repo.get(second.id) is None
            assert len(await messages.history(other.id)) == 1
            # Deleting the open one: the next message opens a fresh conversation.
            assert await repo.delete(1, 1, first.id)
            await session.commit()
            fresh = await repo.current(1, 1)
            assert fresh.id not in (first.id, second.id)
    finally:
        await engine.dispose()
