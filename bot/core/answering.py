"""Answering one stored message: waiting for its turn (in this process and, through
`Coordination`, in the others), generating, streaming and storing the reply.

Part of `ChatService` (it inherits this class); kept apart to keep each file readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.coordination import Coordination, Verdict
from bot.core.in_flight import ActiveReply, Cut, RepliesInFlight
from bot.core.reasoning import answer_of
from bot.core.turn import Outcome, ReplySink, to_turns
from bot.core.turn_writer import TurnWriter
from models.engines import GenerationHandle
from models.prompt.window import WindowResult
from models.runtime.chat_model import ChatModel
from models.runtime.generation import GenerationResult
from storage.errors import StorageError
from storage.records import MessageRecord, Status, UserRecord
from storage.repositories import MessageRepository, UserRepository

logger = logging.getLogger("bot.core.chat")  # one logger for the whole chat service

STATUS_POLL = 1.0
CHECKPOINT_EVERY = 5.0  # seconds between saves of a reply that is still being written


class TurnAnswering:
    model: ChatModel
    coordination: Coordination
    _replies: RepliesInFlight
    _told_forgotten: set[int]
    _speeds: deque[float]

    def system_prompt_for(self, user: UserRecord | None) -> str | None:
        raise NotImplementedError

    async def _answer(
        self,
        session: AsyncSession,
        writer: TurnWriter,
        active: ActiveReply,
        user: UserRecord,
        message: MessageRecord,
        sink: ReplySink,
    ) -> Outcome:
        """Answer `message` when its turn comes, in this process and across processes (see
        bot.core.coordination); release its claim after."""
        outcome: Outcome | None = None
        cancelled = False
        try:
            outcome = await self._in_turn(session, writer, active, user, message, sink)
            return outcome
        except asyncio.CancelledError:
            cancelled = True  # the process goes down: the message stays for another one
            raise
        finally:
            if message.status == "pending" and not cancelled and _gives_up(outcome):
                # No reply comes (stopped while waiting, or failed): it waits no more.
                with contextlib.suppress(SQLAlchemyError, StorageError):
                    await self.coordination.given_up(session, message.id)
            await self.coordination.release(message.id)

    async def _in_turn(
        self,
        session: AsyncSession,
        writer: TurnWriter,
        active: ActiveReply,
        user: UserRecord,
        message: MessageRecord,
        sink: ReplySink,
    ) -> Outcome:
        fresh = message.status == "pending"  # waiting for its first answer (not regenerated)
        while True:
            async with self._replies.turn(active.key) as my_turn:
                if active.cut is Cut.STOPPED:
                    return Outcome(stopped=True)
                if active.forgotten:
                    return Outcome(forgotten=True)
                if not my_turn:
                    await writer.mark_waiting(message.id)
                    return Outcome(waiting=self._replies.first_to_wait(active.key))
                async with self.coordination.conversation(active.key):
                    verdict = await self.coordination.verdict(
                        session, user.id, active.chat_id, message.id, fresh
                    )
                    if verdict is Verdict.ANSWERED:
                        return Outcome()
                    if verdict is Verdict.GO:
                        return await self._answer_now(session, writer, active, user, message, sink)
            # An earlier message of the chat waits: let it go first, in whichever process.
            await self.coordination.pause()

    async def _answer_now(
        self,
        session: AsyncSession,
        writer: TurnWriter,
        active: ActiveReply,
        user: UserRecord,
        message: MessageRecord,
        sink: ReplySink,
    ) -> Outcome:
        history = await MessageRepository(session).history(message.conversation_id)
        # Read again: a /system sent while this reply waited applies to it.
        current = await UserRepository(session).get(user.id) or user
        window = self.model.build_prompt(
            self.system_prompt_for(current), to_turns(history, message.id), key=active.key
        )
        reply_id = await writer.open_reply(message.conversation_id, message.id)
        if reply_id is None:
            return Outcome(forgotten=True)
        # The reply's claim is held until the front end has sent it (`ChatService.delivered`):
        # a process killed before that leaves it to another, which sends it.
        try:
            outcome = await self._generate(writer, active, window, message, reply_id, sink)
        except BaseException:
            await asyncio.shield(self.coordination.release(reply_id))  # whoever finds it sends it
            raise
        if outcome.shows_nothing:
            await self.coordination.release(reply_id)  # nothing to send (or a /forget)
        return outcome

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
        # Nothing written before a shutdown: the message waits for the restart, and this
        # empty reply is nothing to send.
        left = active.cut is Cut.SHUTDOWN and not answer_of(result.text).strip()
        await writer.save_reply(
            message, reply_id, result.text, status, result.n_tokens, nothing_to_send=left
        )
        self._note_speed(status, result)
        if left:
            await writer.mark_waiting(message.id)  # the restart answers
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
        told_no_server = False
        while not generation.started.is_set():
            if generation.waiting_for_server.is_set() and not told_no_server:
                await sink.show_engine_wait()  # once: no place to count while no server answers
                told_no_server = True
            ahead = generation.position - 1
            if ahead >= 1 and ahead != shown:
                await sink.show_queue(ahead)
                shown = ahead
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(generation.started.wait(), STATUS_POLL)
        if (shown is not None or told_no_server) and not generation.cancelled:
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


def _gives_up(outcome: Outcome | None) -> bool:
    """No reply was opened, and the message is neither kept for later nor deleted."""
    if outcome is None:
        return True  # an error
    return outcome.shows_nothing and not (outcome.waiting or outcome.forgotten)
