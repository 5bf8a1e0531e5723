"""Child process for the crash test: store a user's message and a pending reply, commit, say so,
then sit in an uncommitted write (as during a long generation) until killed with SIGKILL.

Run as `python storage_child.py DATABASE_URL`; importing it has no side effects.
"""

from __future__ import annotations

import asyncio
import sys

from storage.database import create_engine, create_session_factory, migrate
from storage.repositories import ConversationRepository, MessageRepository, UserRepository

USER_ID = 4242
USER_TEXT = "Сохрани меня 🙂 \x00 \ud800 שלום — до kill -9"
PARTIAL_REPLY = "Начало ответа, которое"
MARKER = "STORED"


async def main(url: str) -> None:
    engine = create_engine(url)
    await migrate(engine)
    sessions = create_session_factory(engine)
    async with sessions() as session:
        await UserRepository(session).upsert(
            USER_ID, username="crash", first_name="Краш", language_code="ru"
        )
        conversation = await ConversationRepository(session).current(USER_ID, USER_ID)
        messages = MessageRepository(session)
        await messages.add(conversation.id, "user", USER_TEXT, telegram_message_ids=[10])
        reply = await messages.add(conversation.id, "bot", PARTIAL_REPLY, status="pending")
        await session.commit()
    print(MARKER, conversation.id, reply.id, flush=True)
    async with sessions() as session:
        # Written but never committed: the kill must roll this back, not half-apply it.
        await MessageRepository(session).update(reply.id, text=PARTIAL_REPLY + " never committed")
        await session.flush()
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
