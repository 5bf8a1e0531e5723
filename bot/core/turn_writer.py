"""Every database write of one turn, in one place.

Each write holds the user's lock and is skipped once /forget has come, so nothing of a
forgotten user is written after the deletion. Each write is committed at once: the chat
core commits here and nowhere else.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.coordination import Coordination
from bot.core.in_flight import ActiveReply
from bot.core.reasoning import answer_of
from bot.core.turn import Turn
from storage.records import MessageRecord, Status
from storage.repositories import ConversationRepository, MessageRepository


class TurnWriter:
    def __init__(
        self,
        session: AsyncSession,
        active: ActiveReply,
        user_lock: asyncio.Lock,
        model: str,
        coordination: Coordination,
    ) -> None:
        self._session = session
        self._active = active
        self._lock = user_lock
        self._model = model
        self._shared = coordination

    async def store_message(self, turn: Turn, n_tokens: int) -> MessageRecord | None:
        """The user's message, committed before anything can go wrong: what the user typed is
        never lost. None when /forget came first, or when Telegram delivered the same message
        again (after a restart it re-sends the updates the last run had not confirmed)."""
        async with self._lock:
            if self._active.forgotten:
                return None
            conversation = await ConversationRepository(self._session).current(
                turn.user.id, turn.chat_id
            )
            messages = MessageRepository(self._session)
            if turn.telegram_id is not None:
                known = await messages.find_by_telegram_id(conversation.id, turn.telegram_id)
                if known is not None and known.role == "user":
                    return None
            record = await messages.add(
                conversation.id,
                "user",
                turn.text,
                status=self._shared.stored_status,
                n_tokens=n_tokens,
                telegram_message_ids=[turn.telegram_id] if turn.telegram_id is not None else [],
            )
            # The key decides, not the look-up above: another process may store it right now.
            if turn.telegram_id is not None and not await self._shared.received(
                self._session, turn.chat_id, turn.telegram_id, record.id
            ):
                await self._session.rollback()
                return None
            # Claimed before the row is visible: no other process may take it for an orphan.
            await self._shared.claim(record.id)
            try:
                await self._session.commit()
            except BaseException:
                await self._shared.release(record.id)
                raise
        return record

    async def mark_waiting(self, message_id: int) -> None:
        """The bot shuts down before answering: `pending` marks the message for the restart."""
        async with self._lock:
            if not self._active.forgotten:
                await MessageRepository(self._session).update(message_id, status="pending")
                await self._session.commit()

    async def open_reply(self, conversation_id: int, question_id: int) -> int | None:
        """The reply's row exists before generation starts, so a crash leaves it `partial`.
        It is claimed by this process until it is delivered (`ChatService.delivered`; rows
        of gone processes are kept and sent by the others), and its question waits no more.
        The row records its question: the transcript puts the reply right after it, whatever
        came between."""
        async with self._lock:
            if self._active.forgotten:
                return None
            row = await MessageRepository(self._session).add(
                conversation_id,
                "bot",
                "",
                status="pending",
                model=self._model,
                reply_to=question_id,
                delivered=False,
            )
            await self._shared.claim(row.id)
            try:
                await self._shared.opened(self._session, question_id)
                await self._session.commit()
            except BaseException:
                await self._shared.release(row.id)
                raise
        return row.id

    async def save_reply(
        self,
        message: MessageRecord,
        reply_id: int,
        text: str,
        status: Status,
        n_tokens: int | None = None,
        shown_in: list[int] | None = None,
        *,
        nothing_to_send: bool = False,
    ) -> None:
        """A message kept from the last run counts as answered once its reply has ended.
        `shown_in`: the chat messages that show the reply so far, linked already while it is
        written, so that a reply cut short by a kill is tied to what the user saw.
        `nothing_to_send`: a reply that ends without anything for the chat counts as sent."""
        async with self._lock:
            if self._active.forgotten:
                return
            messages = MessageRepository(self._session)
            # A reasoning model's thinking is not stored: later prompts never see it.
            await messages.update(
                reply_id,
                text=answer_of(text),
                status=status,
                n_tokens=n_tokens,
                telegram_message_ids=shown_in or None,
            )
            if nothing_to_send:
                await messages.delivered(reply_id, [])
            if message.status == "pending" and status != "pending":
                await messages.update(message.id, status="complete")
            await self._session.commit()
