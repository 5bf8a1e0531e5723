"""One conversation turn: store the user's message, fit the window, generate, stream, store.

Telegram and the console share this service; they differ only in the `ReplySink` that shows
the reply. The user's message is committed before anything else happens, and the bot's reply
row exists (as `pending`) before generation starts, so a crash loses nothing the user typed and
an interrupted reply is kept as `partial`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bot.telegram.texts import Texts
from models.prompt.templates import ChatMessage
from models.prompt.window import WindowResult
from models.runtime.chat_model import ChatModel
from models.runtime.engine import Generation, GenerationResult
from storage.database import checkpoint
from storage.records import MessageRecord, Status, StorageStats, UserRecord
from storage.repositories import (
    ConversationRepository,
    MessageRepository,
    StatsRepository,
    UserRepository,
)

logger = logging.getLogger(__name__)

# A custom system prompt must leave at least this many tokens for the user's message.
MIN_MESSAGE_ROOM = 32
STATUS_POLL = 1.0
CHECKPOINT_EVERY = 5.0  # seconds between saves of a reply that is still being written


class ReplySink(Protocol):
    """Where a reply is shown while it is written: a Telegram chat or the terminal."""

    async def show_status(self, text: str) -> None: ...

    async def update(self, text: str) -> None: ...

    async def finish(self, text: str, notes: list[str]) -> list[int]: ...

    async def close(self) -> None: ...


class ServiceClosing(Exception):
    """The bot is shutting down and takes no new requests."""


@dataclass(frozen=True)
class Outcome:
    text: str
    status: Status
    n_tokens: int
    user_message_id: int
    bot_message_id: int | None
    window: WindowResult | None
    telegram_message_ids: list[int]


@dataclass
class _Active:
    """A reply of one user in one chat, from the stored message to the stored reply."""

    key: str
    cancelled: bool = False
    forgotten: bool = False  # /forget: nothing of this reply may be stored or shown any more
    generation: Generation | None = None
    streamed: str = ""  # the reply so far

    def cancel(self, *, forget: bool = False) -> None:
        self.cancelled = True
        self.forgotten = self.forgotten or forget
        if self.generation is not None:
            self.generation.cancel()


def conversation_key(user_id: int, chat_id: int) -> str:
    return f"{user_id}:{chat_id}"


def to_turns(history: Sequence[MessageRecord], upto: int) -> list[ChatMessage]:
    """What the model sees: user messages, and bot replies the user saw (failed ones are not)."""
    turns: list[ChatMessage] = []
    for record in history:
        if record.id > upto:
            break
        if record.role == "bot" and (record.status == "failed" or not record.text.strip()):
            continue
        turns.append(ChatMessage(record.role, record.text))
    return turns


class ChatService:
    def __init__(self, model: ChatModel, *, system_prompt: str | None, log_text: bool) -> None:
        self.model = model
        self.default_system_prompt = system_prompt or model.default_system_prompt
        self._log_text = log_text
        self._active: dict[str, list[_Active]] = defaultdict(list)
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._keys_of_user: dict[int, set[str]] = defaultdict(set)
        self._told_forgotten: set[int] = set()  # conversations told their start was dropped
        self._speeds: deque[float] = deque(maxlen=10)
        self._background: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.started_at = time.monotonic()

    # Queries.

    @property
    def queue_length(self) -> int:
        return self.model.engine.queue_length

    @property
    def recent_tokens_per_second(self) -> float | None:
        if not self._speeds:
            return None
        return sum(self._speeds) / len(self._speeds)

    def system_prompt_for(self, user: UserRecord | None) -> str | None:
        if user is not None and user.system_prompt:
            return user.system_prompt
        return self.default_system_prompt

    def is_busy(self, user_id: int, chat_id: int) -> bool:
        return bool(self._active.get(conversation_key(user_id, chat_id)))

    async def stats(self, session: AsyncSession) -> StorageStats:
        return await StatsRepository(session).totals()

    # Commands.

    def check_system_prompt(self, prompt: str) -> tuple[int, int] | None:
        """None when the prompt fits with room for a message, else (tokens, budget)."""
        window = self.model.window
        overhead = window.system_overhead(prompt)
        if overhead + MIN_MESSAGE_ROOM > window.budget:
            return overhead, window.budget - MIN_MESSAGE_ROOM
        return None

    async def set_system_prompt(
        self, session: AsyncSession, user_id: int, prompt: str | None
    ) -> None:
        await UserRepository(session).set_system_prompt(user_id, prompt)
        await session.commit()
        for key in self._keys_of_user.get(user_id, set()):
            self._invalidate(key)

    async def reset(self, session: AsyncSession, user_id: int, chat_id: int) -> None:
        await ConversationRepository(session).reset(user_id, chat_id)
        await session.commit()
        self._invalidate(conversation_key(user_id, chat_id))

    def stop(self, user_id: int, chat_id: int) -> bool:
        """Cancel the user's running and queued replies in that chat; False if there were none."""
        active = self._active.get(conversation_key(user_id, chat_id), [])
        for reply in active:
            reply.cancel()
        return bool(active)

    async def forget(self, session: AsyncSession, user_id: int) -> None:
        # Every chat the user ever talked in, also before a restart: their kept model states
        # (files included) go with the text.
        conversations = await ConversationRepository(session).list_for_user(user_id)
        keys = self._keys_of_user.pop(user_id, set()) | {
            conversation_key(user_id, c.chat_id) for c in conversations
        }
        keys.add(conversation_key(user_id, user_id))
        for key in keys:
            for reply in self._active.get(key, []):
                reply.cancel(forget=True)
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
        self._invalidate(conversation_key(user_id, chat_id))
        return True

    # The turn itself.

    async def reply(
        self,
        session: AsyncSession,
        *,
        user: UserRecord,
        chat_id: int,
        text: str,
        telegram_id: int | None,
        sink: ReplySink,
        texts: Texts,
    ) -> Outcome:
        key = conversation_key(user.id, chat_id)
        conversations, messages = ConversationRepository(session), MessageRepository(session)
        # Registered before the first await, so a /stop or /forget that arrives while the
        # message is being stored already finds this reply.
        active = _Active(key)
        self._active[key].append(active)
        self._keys_of_user[user.id].add(key)
        self._idle.clear()
        try:
            conversation = await conversations.current(user.id, chat_id)
            user_row = await messages.add(
                conversation.id,
                "user",
                text,
                n_tokens=len(self.model.tokenizer.encode(text, special=False)),
                telegram_message_ids=[telegram_id] if telegram_id is not None else [],
            )
            # Committed before anything can go wrong: what the user typed is never lost.
            await session.commit()
            if self._log_text:
                logger.info("user %d in chat %d: %r", user.id, chat_id, text)
            if self._closing:
                await sink.close()
                raise ServiceClosing
            # One reply at a time per conversation, so each prompt sees the previous answer.
            async with self._locks[key]:
                if active.cancelled:
                    await sink.close()
                    return Outcome("", "partial", 0, user_row.id, None, None, [])
                history = await messages.history(conversation.id)
                # Read again: a /system sent while this reply waited applies to it.
                current = await UserRepository(session).get(user.id) or user
                window = self.model.build_prompt(
                    self.system_prompt_for(current), to_turns(history, user_row.id)
                )
                bot_row = await messages.add(
                    conversation.id, "bot", "", status="pending", model=self.model.name
                )
                await session.commit()
                return await self._generate(
                    session, active, window, user_row.id, bot_row.id, conversation.id, sink, texts
                )
        finally:
            self._active[key].remove(active)
            if not self._active[key]:
                del self._active[key]
                self._locks.pop(key, None)  # nobody waits on it any more
            if not self._active:
                self._idle.set()

    async def _generate(
        self,
        session: AsyncSession,
        active: _Active,
        window: WindowResult,
        user_row_id: int,
        bot_row_id: int,
        conversation_id: int,
        sink: ReplySink,
        texts: Texts,
    ) -> Outcome:
        generation = self._submit(window, active.key)
        active.generation = generation
        if active.cancelled or self._closing:
            generation.cancel()
        try:
            await self._wait_for_start(generation, sink, texts)
            checkpoint = time.monotonic()
            async for delta in generation.stream():
                if active.forgotten:
                    break
                active.streamed += delta
                text = active.streamed
                await sink.update(text)
                if time.monotonic() - checkpoint >= CHECKPOINT_EVERY:
                    # Even a kill -9 then leaves most of a long reply in the database.
                    await self._store(session, bot_row_id, text, "pending", None)
                    checkpoint = time.monotonic()
            result = await generation.result()
            if active.forgotten:
                # The user deleted everything, this reply's rows included: store and show nothing.
                await sink.close()
                return Outcome("", "partial", 0, user_row_id, None, window, [])
        except asyncio.CancelledError:
            generation.cancel()
            partial = active.streamed
            await asyncio.shield(self._store(session, bot_row_id, partial, "partial", None))
            raise
        except Exception:
            logger.exception("generation failed")
            partial = active.streamed
            await self._store(session, bot_row_id, partial, "failed", None)
            ids = await sink.finish(partial, [texts.reply_failed])
            await self._store_ids(session, bot_row_id, ids)
            return Outcome(partial, "failed", 0, user_row_id, bot_row_id, window, ids)
        status: Status = "partial" if result.finish_reason == "cancelled" else "complete"
        await self._store(session, bot_row_id, result.text, status, result)
        notes = self._notes(window, conversation_id, status, result.text, texts)
        ids = await sink.finish(result.text, notes)
        await self._store_ids(session, bot_row_id, ids)
        return Outcome(result.text, status, result.n_tokens, user_row_id, bot_row_id, window, ids)

    def _notes(
        self, window: WindowResult, conversation_id: int, status: Status, text: str, texts: Texts
    ) -> list[str]:
        notes: list[str] = []
        if status == "partial":
            notes.append(texts.reply_stopped)
        elif not text.strip():
            notes.append(texts.empty_reply)
        if window.truncated_last:
            notes.append(texts.truncated_message)
        if window.dropped_turns and conversation_id not in self._told_forgotten:
            self._told_forgotten.add(conversation_id)
            notes.append(texts.forgotten_start)
        return notes

    async def _wait_for_start(self, generation: Generation, sink: ReplySink, texts: Texts) -> None:
        shown: int | None = None
        while not generation.started.is_set():
            ahead = generation.position - 1
            if ahead >= 1 and ahead != shown:
                await sink.show_status(texts.queue_position.format(ahead=ahead))
                shown = ahead
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(generation.started.wait(), STATUS_POLL)
        if shown is not None and not generation.cancelled:
            # Replace the stale queue place: reading a long prompt can take minutes on a CPU.
            await sink.show_status(texts.queue_your_turn)

    async def _store(
        self,
        session: AsyncSession,
        row_id: int,
        text: str,
        status: Status,
        result: GenerationResult | None,
    ) -> None:
        await MessageRepository(session).update(
            row_id,
            text=text,
            status=status,
            n_tokens=result.n_tokens if result else None,
        )
        await session.commit()
        if result is not None:
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

    async def _store_ids(self, session: AsyncSession, row_id: int, ids: list[int]) -> None:
        if ids:
            await MessageRepository(session).update(row_id, telegram_message_ids=ids)
            await session.commit()

    # The engine keeps each conversation's model state under its key.

    def _submit(self, window: WindowResult, key: str) -> Generation:
        return self.model.engine.submit(
            window.tokens, max_new_tokens=window.max_new_tokens, key=key
        )

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

    async def shutdown(self, grace: float) -> bool:
        """Refuse new replies, stop the running ones and wait until they are stored."""
        self._closing = True
        for replies in list(self._active.values()):
            for reply in replies:
                reply.cancel()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            logger.warning("replies still running after %.0f s", grace)
            return False
        if self._background:  # a /forget's erasure of kept states must not be cut short
            await asyncio.wait(set(self._background), timeout=grace)
        return True
