"""One conversation turn: store the user's message, fit the window, generate, stream, store.

Telegram and the console share this service; they differ only in the `ReplySink` that shows
the reply and in how they word an `Outcome`. The user's message is committed before anything
else happens, and the bot's reply row exists (as `pending`) before generation starts, so a
crash loses nothing the user typed and an interrupted reply is kept as `partial`. A message
the bot had no time to answer before shutting down is marked `pending` and answered after the
restart.

Transactions: the chat core commits (this service, `TurnWriter` for the writes of a turn, and
the username bindings of `username_access`), nothing else does; middlewares open and close the
session, repositories never commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bot.core.answering import CHECKPOINT_EVERY, TurnAnswering
from bot.core.coordination import Coordination, LocalCoordination
from bot.core.in_flight import ActiveReply, Cut, RepliesInFlight
from bot.core.ordering import Place
from bot.core.turn import Outcome, ReplySink, Turn, conversation_key, state_key
from bot.core.turn_writer import TurnWriter
from bot.core.update_once import UpdateTurn
from models.runtime.chat_model import ChatModel
from storage.database import checkpoint
from storage.records import MessageRecord, StorageStats, UserRecord
from storage.repositories import (
    ConversationRepository,
    MessageRepository,
    StatsRepository,
    UserRepository,
)

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_EVERY", "ChatService"]


class ChatService(TurnAnswering):
    def __init__(
        self,
        model: ChatModel,
        *,
        system_prompt: str | None,
        log_text: bool,
        coordination: Coordination | None = None,
    ) -> None:
        self.model = model
        self.coordination = coordination or LocalCoordination()
        self.default_system_prompt = system_prompt or model.default_system_prompt
        self.started_at = time.monotonic()
        self._log_text = log_text
        self._replies = RepliesInFlight()
        self._told_forgotten: set[int] = set()  # conversations told their start was dropped
        self._speeds: deque[float] = deque(maxlen=10)
        self._background: set[asyncio.Task[None]] = set()

    def delivering(self) -> contextlib.AbstractContextManager[None]:
        """Held by a front end while it answers an update: shutdown waits until it is done."""
        return self._replies.delivering()

    # Queries.

    @property
    def waiting(self) -> int:
        """Every accepted message not answered yet, being answered or waiting its turn."""
        return self._replies.count

    @property
    def idle(self) -> bool:
        """No reply is waiting, running or being delivered."""
        return self._replies.idle

    @property
    def recent_tokens_per_second(self) -> float | None:
        if not self._speeds:
            return None
        return sum(self._speeds) / len(self._speeds)

    def system_prompt_for(self, user: UserRecord | None) -> str | None:
        if user is not None and user.system_prompt:
            return user.system_prompt
        return self.default_system_prompt

    async def stats(self, session: AsyncSession) -> StorageStats:
        return await StatsRepository(session).totals()

    # Users and commands.

    async def touch_user(
        self,
        session: AsyncSession,
        user_id: int,
        *,
        username: str | None,
        first_name: str | None,
        language_code: str | None,
    ) -> UserRecord:
        """Keep the user's record current; committed at once so that a long reply never holds
        the write lock on the users table."""
        record = await UserRepository(session).upsert(
            user_id, username=username, first_name=first_name, language_code=language_code
        )
        await session.commit()
        return record

    async def user(self, session: AsyncSession, user_id: int) -> UserRecord | None:
        return await UserRepository(session).get(user_id)

    async def set_system_prompt(
        self, session: AsyncSession, user_id: int, prompt: str | None
    ) -> None:
        await UserRepository(session).set_system_prompt(user_id, prompt)
        await session.commit()
        for key in self._replies.keys_of_user(user_id):
            self._invalidate(key)
        for conversation in await ConversationRepository(session).list_for_user(user_id):
            self._invalidate(state_key(user_id, conversation.chat_id, conversation.id))

    async def reset(self, session: AsyncSession, user_id: int, chat_id: int) -> None:
        """Start a new conversation; the old one keeps its history and its kept state, for
        /chats to switch back to."""
        await ConversationRepository(session).reset(user_id, chat_id)
        await session.commit()

    def busy(self, user_id: int, chat_id: int) -> bool:
        """A reply of the user in that chat is written or waits its turn."""
        return conversation_key(user_id, chat_id) in self._replies.keys_of_user(user_id)

    def drop_state(self, key: str) -> None:
        """Erase the model state kept under `key` (a deleted conversation)."""
        self._on_model_thread(self.model.engine.forget(key))

    def stop(self, user_id: int, chat_id: int) -> bool:
        """Cancel the user's running and queued replies in that chat; False if there were none."""
        return self._replies.cancel(conversation_key(user_id, chat_id), Cut.STOPPED)

    async def stop_everywhere(self, session: AsyncSession, user_id: int, chat_id: int) -> bool:
        """`stop` here and, with several processes, in the one that runs the reply: False if
        no process had a reply running or waiting in that chat."""
        here = self.stop(user_id, chat_id)
        elsewhere = await self.coordination.record_stop(session, user_id, chat_id)
        return here or elsewhere

    async def apply_remote_stops(self) -> None:
        """Stops asked for in any process end the replies here to messages stored before."""
        for stop in await self.coordination.new_stops():
            key = conversation_key(stop.user_id, stop.chat_id)
            self._replies.cancel(key, Cut.STOPPED, up_to=stop.up_to_message_id)

    def update_once(self, update_id: int) -> contextlib.AbstractAsyncContextManager[UpdateTurn]:
        """Hold an update while it is taken on; `.first` is False for one some process (this
        one included) has taken on already."""
        return self.coordination.update_once(update_id)

    async def forget(self, session: AsyncSession, user_id: int) -> None:
        # Every chat the user ever talked in, also before a restart: their kept model states
        # (files included) go with the text.
        async with self._replies.user_lock(user_id):
            conversations = await ConversationRepository(session).list_for_user(user_id)
            keys = self._replies.keys_of_user(user_id) | {
                conversation_key(user_id, c.chat_id) for c in conversations
            }
            keys.add(conversation_key(user_id, user_id))
            for key in keys:
                self._replies.cancel(key, Cut.FORGOTTEN)
            keys |= {state_key(user_id, c.chat_id, c.id) for c in conversations}
            await UserRepository(session).forget(user_id)
            await session.commit()
        if isinstance(session.bind, AsyncEngine):
            await checkpoint(session.bind)  # the deleted text must not linger in SQLite's log
        for key in keys:
            self._on_model_thread(self.model.engine.forget(key))

    async def apply_edit(
        self, session: AsyncSession, user_id: int, chat_id: int, telegram_id: int, text: str
    ) -> bool:
        """An edited Telegram message corrects its stored turn instead of adding one."""
        conversation = await ConversationRepository(session).current(user_id, chat_id)
        messages = MessageRepository(session)
        record = await messages.find_by_telegram_id(conversation.id, telegram_id)
        if record is None or record.role != "user":
            return False
        await messages.update(record.id, text=text)
        await session.commit()
        self._invalidate(state_key(user_id, chat_id, conversation.id))
        return True

    # The turn itself.

    async def reply(
        self, session: AsyncSession, turn: Turn, sink: ReplySink, ticket: Place | None = None
    ) -> Outcome:
        """Store the message (after every earlier message of the conversation: `ticket`),
        then answer it. A message accepted while the bot shuts down is kept for the restart."""
        with self._replies.register(turn.key, turn.user.id) as active:
            active.chat_id = turn.chat_id
            writer = self._writer(session, active)
            try:
                if ticket is not None:
                    await ticket.wait()
                n_tokens = len(self.model.tokenizer.encode(turn.text, special=False))
                stored = await writer.store_message(turn, n_tokens)
            finally:
                if ticket is not None:
                    ticket.release()
            if stored is None:
                return Outcome(forgotten=True)
            active.message_id = stored.id
            if self._log_text:
                logger.info("user %d in chat %d: %r", turn.user.id, turn.chat_id, turn.text)
            return await self._answer(session, writer, active, turn.user, stored, sink)

    async def keep_interrupted_replies(self, session: AsyncSession) -> None:
        """At start (and, with several processes, in every sweep): replies a killed process
        left `pending` are kept as `partial`; never a reply a live process is writing."""
        count = await self.coordination.keep_interrupted(session)
        await session.commit()
        if count:
            logger.warning("Kept %d interrupted replies of a gone process as partial", count)

    async def delivered(
        self, session: AsyncSession, reply_id: int | None, telegram_ids: list[int]
    ) -> None:
        """The front end has sent reply `reply_id` to its chat, in these chat messages (none:
        a terminal, or what was linked while it was written stays). Committed, and only then
        is the reply's claim let go: until here a process killed leaves it for another to
        send. Called on every path that ends a shown reply, also when sending failed."""
        if reply_id is None:
            return
        try:
            await MessageRepository(session).delivered(reply_id, telegram_ids)
            await session.commit()
        finally:
            await asyncio.shield(self.coordination.release(reply_id))

    async def not_delivered(self, reply_id: int | None) -> None:
        """The front end could not send the reply (it was cut short): whoever finds it, this
        process's next start or another process's sweep, sends it."""
        if reply_id is not None:
            await asyncio.shield(self.coordination.release(reply_id))

    async def undelivered_replies(
        self, session: AsyncSession
    ) -> list[tuple[MessageRecord, UserRecord, int]]:
        """(reply, its user, chat id) stored but never sent to the chat, oldest first: left by
        the last run; with several processes, by a gone one (claimed for this one to send,
        and `delivered` then)."""
        return await self.coordination.undelivered(session)

    async def waiting_messages(
        self, session: AsyncSession
    ) -> list[tuple[MessageRecord, UserRecord, int]]:
        """(message, its user, chat id) a previous run (or a gone process) accepted and never
        answered, oldest first; with several processes, claimed for this one to answer."""
        return await self.coordination.adopt_waiting(session)

    async def answer_waiting(
        self,
        session: AsyncSession,
        message: MessageRecord,
        user: UserRecord,
        chat_id: int,
        sink: ReplySink,
    ) -> Outcome:
        """Answer a message a previous run accepted but did not answer."""
        with self._replies.register(conversation_key(user.id, chat_id), user.id) as active:
            active.chat_id = chat_id
            active.message_id = message.id
            writer = self._writer(session, active)
            return await self._answer(session, writer, active, user, message, sink)

    def _writer(self, session: AsyncSession, active: ActiveReply) -> TurnWriter:
        lock = self._replies.user_lock(active.user_id)
        return TurnWriter(session, active, lock, self.model.name, self.coordination)

    # The engine keeps each conversation's model state under its key.

    def _invalidate(self, key: str) -> None:
        self._on_model_thread(self.model.engine.invalidate(key))

    def _on_model_thread(self, work: Coroutine[Any, Any, None]) -> None:
        """Drop kept model states without making the command wait: the model's thread may be
        busy with another user's reply for minutes. The work is queued on that thread now,
        so it runs before any later generation."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("dropping a kept model state failed", exc_info=task.exception())

    # Shutdown.

    async def shutdown(self, session: AsyncSession, grace: float) -> bool:
        """Take no more work: running replies stop and are stored, waiting messages are marked
        `pending` for the restart at once (all together, before anything can cut the shutdown
        short); then wait until the replies are written and delivered."""
        waiting = self._replies.close()
        if waiting:
            await MessageRepository(session).mark_waiting(waiting)
            await session.commit()
            logger.info("%d messages will be answered after the restart", len(waiting))
        if not await self._replies.wait_idle(grace):
            logger.warning("replies still running after %.0f s", grace)
            return False
        if self._background:  # a /forget's erasure of kept states must not be cut short
            await asyncio.wait(set(self._background), timeout=grace)
        return True

    @property
    def closing(self) -> bool:
        return self._replies.closing
