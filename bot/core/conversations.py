"""Several conversations per person and chat: list them, switch to one, delete one.

The front ends (Telegram's /chats, the console's /chats) call these; /new is ChatService.reset.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.chat import ChatService
from bot.core.turn import state_key
from storage.records import ConversationSummary
from storage.repositories import ConversationRepository

logger = logging.getLogger(__name__)

RECENT = 10  # conversations a list shows


async def recent(session: AsyncSession, user_id: int, chat_id: int) -> list[ConversationSummary]:
    found = await ConversationRepository(session).recent(user_id, chat_id, RECENT)
    await session.commit()
    return found


async def switch(session: AsyncSession, user_id: int, chat_id: int, conversation_id: int) -> bool:
    """Continue conversation `conversation_id`: its history, window and kept model state
    (kept under its own key, so nothing needs dropping). False if it is not the user's."""
    done = await ConversationRepository(session).switch(user_id, chat_id, conversation_id)
    await session.commit()
    return done


async def delete(
    service: ChatService, session: AsyncSession, user_id: int, chat_id: int, conversation_id: int
) -> bool:
    """Delete one conversation with its messages and its kept model state."""
    done = await ConversationRepository(session).delete(user_id, chat_id, conversation_id)
    await session.commit()
    if done:
        service.drop_state(state_key(user_id, chat_id, conversation_id))
    return done


def first_words(text: str, limit: int = 32) -> str:
    """The start of a conversation's first message, on one line, for a button."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
