"""Regenerate: another answer to the same question. The old reply stays stored as 'replaced'
(never shown to the model again) and the question is answered anew."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from storage.records import MessageRecord
from storage.repositories import ConversationRepository, MessageRepository


async def replace_reply(
    session: AsyncSession, user_id: int, chat_id: int, reply_id: int
) -> MessageRecord | None:
    """Mark reply `reply_id` replaced and return the question it answered; None when it is not
    the finished last message of the user's open conversation in this chat."""
    conversation = await ConversationRepository(session).current(user_id, chat_id)
    messages = MessageRepository(session)
    history = [r for r in await messages.history(conversation.id) if r.status != "replaced"]
    if len(history) < 2 or history[-1].id != reply_id:
        await session.rollback()
        return None
    reply, question = history[-1], history[-2]
    if reply.role != "bot" or reply.status == "pending" or question.role != "user":
        await session.rollback()
        return None
    await messages.update(reply.id, status="replaced")
    await session.commit()
    return question
