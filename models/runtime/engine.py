"""Generation behind an async interface.

One llama.cpp context is not thread-safe, so a single worker thread owns it. Requests wait in
a FIFO queue until one of the context's `PARALLEL` sequences is free; the worker then decodes
every admitted conversation together, one batch per step (see `scheduler`). Callers get a
`Generation` handle: its text deltas as an async iterator, its place in the queue, `cancel()`,
and the final result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from models.runtime.context import Runtime
from models.runtime.generation import FinishReason, Generation, GenerationResult, unstarted
from models.runtime.sampler import LogitsProcessor, SamplingParams
from models.runtime.scheduler import Scheduler, Transcript, remember
from models.runtime.state_cache import StateCache

__all__ = [
    "ChatEngine",
    "FinishReason",
    "Generation",
    "GenerationResult",
    "LogitsProcessor",
    "SamplingParams",
    "Transcript",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ChatEngine:
    def __init__(
        self,
        runtime: Runtime,
        *,
        n_ctx: int,
        stop_ids: set[int],
        sampling: SamplingParams | None = None,
        state_cache: StateCache | None = None,
    ) -> None:
        self._llama = runtime
        self.n_ctx = n_ctx
        self.sampling = sampling or SamplingParams()
        eos = int(runtime.model.token_eos())
        self._scheduler = Scheduler(
            runtime,
            stop_ids=frozenset(stop_ids | {eos}),
            sampling=self.sampling,
            state_cache=state_cache,
            on_finish=self._finished,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._lock = threading.Lock()  # guards the queue, the running count and the commands
        self._queue: deque[Generation] = deque()
        self._running = 0
        self._commands: list[tuple[str, concurrent.futures.Future[None]]] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._ids = itertools.count(1)

    @property
    def state_cache(self) -> StateCache | None:
        return self._scheduler.state_cache

    @state_cache.setter
    def state_cache(self, cache: StateCache | None) -> None:
        """Between requests only (the bench measures with and without)."""
        self._scheduler.state_cache = cache

    @property
    def parallel(self) -> int:
        return self._llama.parallel

    @property
    def stop_ids(self) -> frozenset[int]:
        return self._scheduler.stop_ids

    @property
    def steps(self) -> int:
        """Decode steps so far."""
        return self._scheduler.steps

    @property
    def queue_length(self) -> int:
        with self._lock:
            return len(self._queue) + self._running

    def position_of(self, generation: Generation) -> int:
        with self._lock:
            if generation not in self._queue:
                return 0
            # A cancelled request ahead will be skipped: it does not make anybody wait.
            ahead = itertools.takewhile(lambda other: other is not generation, self._queue)
            waiting = sum(1 for other in ahead if not other.cancelled)
            return waiting + 1 + (1 if self._running else 0)

    def transcript(self, key: str) -> Transcript | None:
        """The last finished reply of the conversation: its prompt and generated ids."""
        with self._scheduler.tables:
            return self._scheduler.transcripts.get(key)

    def last_prompt(self, key: str) -> tuple[bytes, tuple[int, ...]] | None:
        with self._scheduler.tables:
            return self._scheduler.prompts.get(key)

    def note_prompt(self, key: str, digest: bytes, tokens: list[int]) -> None:
        """What the conversation's newest prompt was built from (see `follow_up`)."""
        with self._scheduler.tables:
            remember(self._scheduler.prompts, key, (digest, tuple(tokens)))

    def submit(
        self,
        prompt: list[int],
        *,
        max_new_tokens: int,
        logits_processor: LogitsProcessor | None = None,
        key: str | None = None,
    ) -> Generation:
        """Queue a prompt; prompt plus reply is capped at `n_ctx` whatever is asked.

        `key` names the conversation (for example f"{user_id}:{chat_id}"): its cells and kept
        state are reused by its own later requests only. Requests without a key share theirs.
        """
        if self._closed:
            raise RuntimeError("the engine is closed")
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.n_ctx:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit n_ctx={self.n_ctx}")
        cap = min(max_new_tokens, self.n_ctx - len(prompt))
        generation = Generation(self, list(prompt), cap, logits_processor, key)
        with self._lock:
            self._queue.append(generation)
        self._wake()
        return generation

    def _wake(self) -> None:
        if self._worker is None:
            self._wakeup = asyncio.Event()
            self._worker = asyncio.create_task(self._work(), name="llama-dispatch")
        assert self._wakeup is not None
        self._wakeup.set()

    async def _work(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await loop.run_in_executor(self._executor, self._run)
            except Exception:
                logger.exception("the model's worker failed")
            if self._closed and not self._has_work():
                return

    def _has_work(self) -> bool:
        with self._lock:
            return bool(self._queue or self._running or self._commands)

    # -- the worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        """Step until nothing is queued, running or asked for."""
        scheduler = self._scheduler
        while True:
            self._run_commands()
            self._admit()
            try:
                stepped = scheduler.step()
            except Exception as exc:
                logger.exception("a decode step failed")
                for slot in scheduler.active():
                    assert slot.generation is not None
                    slot.generation.cancel()
                scheduler.reap_cancelled()
                for generation in self._take_queue():
                    generation.fail(exc)
                return
            if not stepped and not self._has_work():
                for slot in scheduler.slots:
                    scheduler.flush(slot)
                return

    def _finished(self) -> None:
        with self._lock:
            self._running -= 1

    def _take_queue(self) -> list[Generation]:
        with self._lock:
            taken = list(self._queue)
            self._queue.clear()
            return taken

    def _admit(self) -> None:
        scheduler = self._scheduler
        while True:
            with self._lock:
                if not self._queue:
                    return
                head = self._queue[0]
                if head.cancelled:
                    self._queue.popleft()
                    slot = None
                else:
                    if scheduler.busy(head.key):
                        return  # one conversation's messages stay in order
                    slot = scheduler.slot_for(head.key)
                    if slot is None:
                        return
                    self._queue.popleft()
                    self._running += 1
            if slot is None:
                head.complete(unstarted(head))
                continue
            try:
                scheduler.admit(slot, head)
            except Exception as exc:
                logger.exception("could not start generation %d", head.id)
                self._finished()
                head.fail(exc)
                continue
            head.begin()

    def _run_commands(self) -> None:
        with self._lock:
            commands, self._commands = self._commands, []
        for key, done in commands:
            try:
                self._scheduler.drop(key)
            except Exception as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

    async def on_worker(self, function: Callable[..., T], *args: object) -> T:
        """Run `function` on the worker thread, between generations. The bench runs plain
        llama-cpp-python there: llama.cpp's OpenMP threads belong to the calling thread, and a
        second team on another thread slows this one down for as long as it exists."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    # -- conversations ------------------------------------------------------------------------

    async def invalidate(self, key: str) -> None:
        """The conversation's beginning changed (/reset, /system): its kept state is useless."""
        await self._drop(key)

    async def forget(self, key: str) -> None:
        """Erase every trace of the conversation: kept states, files and its cells."""
        await self._drop(key)

    async def _drop(self, key: str) -> None:
        # Runs between two decode steps, on the worker thread that owns the context.
        if self._worker is None or self._worker.done():
            if not self._closed:
                self._scheduler.drop(key)  # no worker thread: nothing else touches the context
                return
            with self._scheduler.tables:  # the context is gone after close()
                self._scheduler.transcripts.pop(key, None)
                self._scheduler.prompts.pop(key, None)
            if self.state_cache is not None:
                self.state_cache.drop(key)
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            self._commands.append((key, done))
        self._wake()
        await asyncio.wrap_future(done)

    def cancel_all(self) -> None:
        with self._lock:
            queued = list(self._queue)
        for generation in queued:
            generation.cancel()
        for slot in self._scheduler.slots:
            if slot.generation is not None:
                slot.generation.cancel()

    async def close(self) -> None:
        """Cancel everything, wait for the worker thread to let go, free the model."""
        self.cancel_all()
        self._closed = True
        if self._worker is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for generation in self._take_queue():
            generation._settle(unstarted(generation), None)
        self._executor.shutdown(wait=True)
        self._llama.close()
