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
    question = _question_of_last_reply(history, reply_id)
    if question is None:
        await session.rollback()
        return None
    await messages.update(reply_id, status="replaced")
    await session.commit()
    return question


def _question_of_last_reply(history: list[MessageRecord], reply_id: int) -> MessageRecord | None:
    """The question that reply `reply_id` answers, if that reply is the last row, finished,
    and answers the user's last message (a reply to an earlier one, sent before the user's
    newer message was answered, is not the conversation's last word)."""
    if len(history) < 2 or history[-1].id != reply_id:
        return None
    reply = history[-1]
    if reply.role != "bot" or reply.status == "pending":
        return None
    users = [r for r in history if r.role == "user"]
    if reply.reply_to is None:  # stored before replies recorded their question
        question = history[-2] if history[-2].role == "user" else None
    else:
        question = next((r for r in users if r.id == reply.reply_to), None)
    if question is None or question.id != users[-1].id:
        return None
    return question
