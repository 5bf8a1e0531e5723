"""Migration 0005 on SQLite and PostgreSQL: replies gain the message they answer; existing
rows keep NULL and their place; a deleted question takes its replies along; back to 0004
cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from migration_db import database_url, downgrade

from bot.core.turn import to_turns
from storage.database import create_engine, create_session_factory, migrate
from storage.errors import StorageError
from storage.repositories import ConversationRepository, MessageRepository, UserRepository


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return await database_url(request.param, tmp_path)


async def test_0005_keeps_old_replies_in_place_and_records_new_ones_questions(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine, "0004")
        sessions = create_session_factory(engine)
        async with sessions() as session:
            await UserRepository(session).upsert(
                7, username="u", first_name="И", language_code="ru"
            )
            conversation = await ConversationRepository(session).current(7, 7)
            messages = MessageRepository(session)
            old = [
                await messages.add(conversation.id, role, text)  # type: ignore[arg-type]
                for role, text in (("user", "m1"), ("user", "m2"), ("bot", "r1"), ("bot", "r2"))
            ]
            await session.commit()
        await migrate(engine)
        async with sessions() as session:
            messages = MessageRepository(session)
            history = await messages.history(conversation.id)
            assert history == old and all(r.reply_to is None for r in history)
            m3 = await messages.add(conversation.id, "user", "m3")
            m4 = await messages.add(conversation.id, "user", "m4")
            r3 = await messages.add(conversation.id, "bot", "r3", reply_to=m3.id)
            await session.commit()
            history = await messages.history(conversation.id)
            assert history[-1] == r3 and r3.reply_to == m3.id
            assert [t.content for t in to_turns(history, m4.id)] == [
                *("m1", "m2", "r1", "r2"),  # as they were seen before the upgrade
                *("m3", "r3", "m4"),
            ]
            for wrong in ({"role": "user", "reply_to": m3.id}, {"role": "bot", "reply_to": r3.id}):
                with pytest.raises(StorageError, match="answer"):
                    await messages.add(conversation.id, text="x", **wrong)  # type: ignore[arg-type]
            await session.rollback()
        async with engine.connect() as conn:
            with pytest.raises(sa.exc.IntegrityError):  # a question that does not exist
                await conn.execute(
                    sa.text(
                        "INSERT INTO messages (conversation_id, role, text, status, created_at, "
                        "reply_to) VALUES (:c, 'bot', 'x', 'complete', :t, 999999)"
                    ),
                    {"c": conversation.id, "t": r3.created_at},
                )
                await conn.commit()
        async with engine.begin() as conn:  # a deleted question takes its replies along
            await conn.execute(sa.text("DELETE FROM messages WHERE id = :id"), {"id": m3.id})
        async with sessions() as session:
            left = await MessageRepository(session).history(conversation.id)
        assert [r.text for r in left] == ["m1", "m2", "r1", "r2", "m4"]

        async with engine.connect() as conn:
            await conn.run_sync(downgrade, "0004")
            await conn.commit()
        async with engine.connect() as conn:
            columns = await conn.run_sync(
                lambda c: [column["name"] for column in sa.inspect(c).get_columns("messages")]
            )
            count = (await conn.execute(sa.text("SELECT count(*) FROM messages"))).scalar_one()
        assert "reply_to" not in columns and count == 5
        await migrate(engine)  # and up again
    finally:
        await engine.dispose()
