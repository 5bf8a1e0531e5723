"""The transcript the model sees puts every reply right after the message it answers, though
storage keeps rows in the order they were written (m1, m2, r1, r2 when a user sends two
messages before the first reply's row is opened)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from mocked_bot import text_update
from test_fast_tier import OWNER, eventually, fast_bot

from bot.core.regenerate import replace_reply
from bot.core.turn import to_turns
from storage.records import MessageRecord, Role, Status
from storage.repositories import ConversationRepository, MessageRepository

NOW = datetime(2026, 12, 8, tzinfo=UTC)


def row(
    id: int, role: Role, text: str, reply_to: int | None = None, status: Status = "complete"
) -> MessageRecord:
    return MessageRecord(id, 1, role, text, status, None, (), None, NOW, reply_to)


def seen(history: list[MessageRecord], upto: int) -> list[str]:
    return [turn.content for turn in to_turns(history, upto)]


def test_a_reply_follows_its_question_though_a_later_message_was_stored_first() -> None:
    history = [
        row(1, "user", "m1"),
        row(2, "user", "m2"),
        row(3, "bot", "r1", reply_to=1),
        row(4, "bot", "r2", reply_to=2),
        row(5, "user", "m3"),
        row(6, "bot", "r3", reply_to=5),
    ]
    assert seen(history, 1) == ["m1"]
    # Answering m2, the model knows what it just said to m1 (stored after m2).
    assert seen(history, 2) == ["m1", "r1", "m2"]
    assert seen(history, 5) == ["m1", "r1", "m2", "r2", "m3"]
    # Roles alternate, as every chat template expects.
    assert [t.role for t in to_turns(history, 5)] == ["user", "bot", "user", "bot", "user"]


def test_replies_to_the_message_answered_now_and_to_later_ones_are_left_out() -> None:
    history = [
        row(1, "user", "m1"),
        row(2, "user", "m2"),
        row(3, "user", "m3"),
        row(4, "bot", "r1", reply_to=1),
        row(5, "bot", "r2 old", reply_to=2, status="replaced"),
        row(6, "bot", "r3", reply_to=3),
        row(7, "bot", "r2 partial", reply_to=2, status="partial"),
    ]
    # Regenerating m2's answer: neither its replaced nor its later reply, nor m3's reply.
    assert seen(history, 2) == ["m1", "r1", "m2"]
    assert seen(history, 3) == ["m1", "r1", "m2", "r2 partial", "m3"]


def test_failed_replaced_and_empty_replies_stay_unseen() -> None:
    history = [
        row(1, "user", "m1"),
        row(2, "user", "m2"),
        row(3, "bot", "сбой", reply_to=1, status="failed"),
        row(4, "bot", "старый", reply_to=2, status="replaced"),
        row(5, "bot", "  ", reply_to=2, status="partial"),
        row(6, "bot", "новый", reply_to=2),
        row(7, "user", "m3"),
    ]
    assert seen(history, 7) == ["m1", "m2", "новый", "m3"]


def test_legacy_replies_without_a_question_keep_their_place_by_id() -> None:
    history = [
        row(1, "user", "m1"),
        row(2, "user", "m2"),
        row(3, "bot", "r1"),  # stored before migration 0005: no reply_to
        row(4, "bot", "r2"),
        row(5, "user", "m3"),
        row(6, "bot", "r3", reply_to=5),
        row(7, "user", "m4"),
    ]
    assert seen(history, 2) == ["m1", "m2"]
    assert seen(history, 5) == ["m1", "m2", "r1", "r2", "m3"]
    assert seen(history, 7) == ["m1", "m2", "r1", "r2", "m3", "r3", "m4"]


async def test_the_second_of_two_quick_messages_is_answered_knowing_the_first_reply(
    tmp_path: Path,
) -> None:
    async with fast_bot(tmp_path) as fast:
        # While a reply is written, the user sends two messages: both are stored before the
        # first of them gets its reply row (replies of a chat are written one at a time).
        fast.model.engine.held = True
        running = asyncio.create_task(fast.feed(text_update(OWNER, "Привет!")))
        await eventually(lambda: fast.model.engine.submitted)
        quick = [
            asyncio.create_task(fast.feed(text_update(OWNER, text)))
            for text in ("Как дела?", "Что нового?")
        ]
        await eventually(lambda: fast.services.chat.waiting >= 3)
        while len(await fast.history(OWNER)) < 4:  # noqa: ASYNC110 - rows have no event
            await asyncio.sleep(0.005)
        fast.model.engine.release()
        await asyncio.gather(running, *quick)
        await fast.feed(text_update(OWNER, "Пока"))

        stored = await fast.history(OWNER)
        # Storage keeps the order rows were written in; each reply names its question.
        assert [(r.role, r.text) for r in stored] == [
            ("user", "Привет!"),
            ("bot", "echo: Привет!"),
            ("user", "Как дела?"),
            ("user", "Что нового?"),
            ("bot", "echo: Как дела?"),
            ("bot", "echo: Что нового?"),
            ("user", "Пока"),
            ("bot", "echo: Пока"),
        ]
        questions = {r.id: r.text for r in stored}
        assert [(questions[r.reply_to], r.text) for r in stored if r.reply_to is not None] == [
            ("Привет!", "echo: Привет!"),
            ("Как дела?", "echo: Как дела?"),
            ("Что нового?", "echo: Что нового?"),
            ("Пока", "echo: Пока"),
        ]
        # What the model saw: each reply right after its message, every time.
        assert [[m.content for m in prompt] for prompt in fast.model.prompts] == [
            ["Привет!"],
            ["Привет!", "echo: Привет!", "Как дела?"],
            ["Привет!", "echo: Привет!", "Как дела?", "echo: Как дела?", "Что нового?"],
            [
                *("Привет!", "echo: Привет!", "Как дела?", "echo: Как дела?"),
                *("Что нового?", "echo: Что нового?", "Пока"),
            ],
        ]

        # 🔄 on the last reply finds its question through the row, not by its neighbour.
        async with fast.services.sessions() as session:
            question = await replace_reply(session, OWNER, OWNER, stored[7].id)
        assert question is not None and question.id == stored[6].id


async def test_regenerate_refuses_a_reply_to_a_message_the_user_has_followed_up(
    tmp_path: Path,
) -> None:
    async with fast_bot(tmp_path) as fast:
        await fast.feed(text_update(OWNER, "m0"))  # the user, the conversation
        async with fast.services.sessions() as session:
            conversation = await ConversationRepository(session).current(OWNER, OWNER)
            messages = MessageRepository(session)
            m1 = await messages.add(conversation.id, "user", "m1")
            m2 = await messages.add(conversation.id, "user", "m2")
            r1 = await messages.add(conversation.id, "bot", "r1", reply_to=m1.id)
            await session.commit()
            # r1 is the last row, but m2 came after its question: replacing it would answer
            # m1 again behind m2's back.
            assert await replace_reply(session, OWNER, OWNER, r1.id) is None
            r2 = await messages.add(conversation.id, "bot", "r2", reply_to=m2.id)
            await session.commit()
            question = await replace_reply(session, OWNER, OWNER, r2.id)
            assert question is not None and question.id == m2.id
            assert [r.status for r in await messages.history(conversation.id)][-2:] == [
                "complete",
                "replaced",
            ]
