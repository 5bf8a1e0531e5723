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

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bot.core.in_flight import ActiveReply, Cut, RepliesInFlight
from bot.core.ordering import Place
from bot.core.reasoning import answer_of
from bot.core.turn import Outcome, ReplySink, Turn, conversation_key, state_key, to_turns
from bot.core.turn_writer import TurnWriter
from models.engines import GenerationHandle
from models.prompt.window import WindowResult
from models.runtime.chat_model import ChatModel
from models.runtime.generation import GenerationResult
from storage.database import checkpoint
from storage.errors import StorageError
from storage.records import MessageRecord, Status, StorageStats, UserRecord
from storage.repositories import (
    ConversationRepository,
    MessageRepository,
    StatsRepository,
    UserRepository,
)

logger = logging.getLogger(__name__)

STATUS_POLL = 1.0
CHECKPOINT_EVERY = 5.0  # seconds between saves of a reply that is still being written


class ChatService:
    def __init__(self, model: ChatModel, *, system_prompt: str | None, log_text: bool) -> None:
        self.model = model
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
        """At start: replies a killed process left `pending` are kept as `partial`."""
        count = await MessageRepository(session).mark_pending_as_partial()
        await session.commit()
        if count:
            logger.warning("Kept %d interrupted replies from the last run as partial", count)

    async def waiting_messages(
        self, session: AsyncSession
    ) -> list[tuple[MessageRecord, UserRecord, int]]:
        """(message, its user, chat id) a previous run accepted and never answered, oldest
        first."""
        return await MessageRepository(session).unanswered()

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
            active.message_id = message.id
            writer = self._writer(session, active)
            return await self._answer(session, writer, active, user, message, sink)

    def _writer(self, session: AsyncSession, active: ActiveReply) -> TurnWriter:
        return TurnWriter(session, active, self._replies.user_lock(active.user_id), self.model.name)

    async def _answer(
        self,
        session: AsyncSession,
        writer: TurnWriter,
        active: ActiveReply,
        user: UserRecord,
        message: MessageRecord,
        sink: ReplySink,
    ) -> Outcome:
        async with self._replies.turn(active.key) as my_turn:
            if active.cut is Cut.STOPPED:
                return Outcome(stopped=True)
            if active.forgotten:
                return Outcome(forgotten=True)
            if not my_turn:
                await writer.mark_waiting(message.id)
                return Outcome(waiting=self._replies.first_to_wait(active.key))
            history = await MessageRepository(session).history(message.conversation_id)
            # Read again: a /system sent while this reply waited applies to it.
            current = await UserRepository(session).get(user.id) or user
            window = self.model.build_prompt(
                self.system_prompt_for(current), to_turns(history, message.id), key=active.key
            )
            reply_id = await writer.open_reply(message.conversation_id)
            if reply_id is None:
                return Outcome(forgotten=True)
            return await self._generate(writer, active, window, message, reply_id, sink)

    async def _generate(
        self,
        writer: TurnWriter,
        active: ActiveReply,
        window: WindowResult,
        message: MessageRecord,
        reply_id: int,
        sink: ReplySink,
    ) -> Outcome:
        generation = self.model.engine.submit(
            window.tokens,
            max_new_tokens=window.max_new_tokens,
            key=f"{active.key}:{message.conversation_id}",  # turn.state_key
        )
        active.generation = generation
        if active.cut is not None:
            generation.cancel()
        try:
            await self._wait_for_start(generation, sink)
            saved_at = time.monotonic()
            async for delta in generation.stream():
                if active.forgotten:
                    break
                active.streamed += delta
                await sink.update(active.streamed)
                if time.monotonic() - saved_at >= CHECKPOINT_EVERY:
                    # Even a kill -9 then leaves most of a long reply in the database.
                    await writer.save_reply(
                        message, reply_id, active.streamed, "pending", shown_in=sink.message_ids
                    )
                    saved_at = time.monotonic()
            result = await generation.result()
        except asyncio.CancelledError:
            generation.cancel()
            await asyncio.shield(writer.save_reply(message, reply_id, active.streamed, "partial"))
            raise
        except (SQLAlchemyError, StorageError):
            generation.cancel()  # a failing database is the front end's to report, not the model
            raise
        except Exception:
            logger.exception("generation failed")
            await writer.save_reply(message, reply_id, active.streamed, "failed")
            return Outcome(answer_of(active.streamed), "failed", reply_id, failed=True)
        if active.forgotten:
            # The user deleted everything, this reply's rows included: store and show nothing.
            return Outcome(forgotten=True)
        status: Status = "complete" if result.finish_reason in ("stop", "length") else "partial"
        await writer.save_reply(message, reply_id, result.text, status, result.n_tokens)
        self._note_speed(status, result)
        if active.cut is Cut.SHUTDOWN and not answer_of(result.text).strip():
            await writer.mark_waiting(message.id)  # nothing written yet: the restart answers
            return Outcome(waiting=self._replies.first_to_wait(active.key))
        return Outcome(
            answer_of(result.text),  # as stored: the reasoning is not part of the reply
            status,
            reply_id,
            stopped=status == "partial" and active.cut is Cut.STOPPED,
            interrupted=status == "partial" and active.cut is Cut.SHUTDOWN,
            cut=result.finish_reason == "cut",
            truncated=window.truncated_last,
            start_forgotten=self._first_time_forgotten(window, message.conversation_id),
            n_tokens=result.n_tokens,
        )

    def _first_time_forgotten(self, window: WindowResult, conversation_id: int) -> bool:
        """The conversation's start dropped out of the window: said once per conversation."""
        if not window.dropped_turns or conversation_id in self._told_forgotten:
            return False
        self._told_forgotten.add(conversation_id)
        return True

    async def _wait_for_start(self, generation: GenerationHandle, sink: ReplySink) -> None:
        shown: int | None = None
        no_server = getattr(generation, "waiting_for_server", None)  # ENGINE=remote only
        while not generation.started.is_set():
            if no_server is not None and no_server.is_set() and shown != -1:
                await sink.show_engine_wait()  # once: nothing to count while no server answers
                shown = -1
            ahead = generation.position - 1
            if ahead >= 1 and ahead != shown:
                await sink.show_queue(ahead)
                shown = ahead
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(generation.started.wait(), STATUS_POLL)
        if shown is not None and not generation.cancelled:
            # Replace the stale queue place: reading a long prompt can take minutes on a CPU.
            await sink.show_your_turn()

    def _note_speed(self, status: Status, result: GenerationResult) -> None:
        if result.n_tokens and result.generation_seconds > 0:
            self._speeds.append(result.tokens_per_second)
        logger.info(
            "reply %s: %d prompt tokens (%d evaluated in %.1f s), %d new at %.1f tok/s",
            status,
            result.n_prompt,
            result.n_prompt_evaluated,
            result.prompt_seconds,
            result.n_tokens,
            result.tokens_per_second,
        )

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
