"""Generation behind an async interface.

One llama.cpp context is not thread-safe, so a single worker thread owns it and requests wait
in a FIFO queue. Callers get a `Generation` handle: its text deltas as an async iterator, its
place in the queue, `cancel()`, and the final result.

The context holds one conversation at a time. A request tagged with a conversation `key`
continues the live context when that conversation ran last; otherwise the live conversation's
state goes into the `StateCache` first, and the new request restores its own kept state when
that state's tokens start its prompt. Only the rest of the prompt is evaluated. All of this
happens on the worker thread, like everything else that touches the context.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import llama_cpp
import numpy as np
import numpy.typing as npt

from models.runtime.kv_state import capture, common_prefix, restore, scrub
from models.runtime.state_cache import StateCache

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled"]
LogitsProcessor = Callable[[npt.NDArray[np.intc], npt.NDArray[np.single]], npt.NDArray[np.single]]


class LlamaLike(Protocol):
    """The parts of `llama_cpp.Llama` the engine uses."""

    n_tokens: int
    input_ids: npt.NDArray[np.intc]

    @property
    def ctx(self) -> Any: ...

    def eval(self, tokens: Sequence[int]) -> None: ...

    def generate(self, tokens: Sequence[int], **kwargs: object) -> object: ...

    def detokenize(
        self, tokens: list[int], prev_tokens: object = None, special: bool = False
    ) -> bytes: ...

    def token_eos(self) -> int: ...

    def n_ctx(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SamplingParams:
    # Defaults from the published ruGPT-3.5-13B LoRA generation config.
    temperature: float = 0.2
    top_p: float = 0.9
    top_k: int = 30
    repeat_penalty: float = 1.15


@dataclass(frozen=True)
class GenerationResult:
    text: str
    n_tokens: int
    n_prompt: int
    n_prompt_evaluated: int
    finish_reason: FinishReason
    prompt_seconds: float
    generation_seconds: float
    n_prompt_restored: int = 0  # tokens that came from a kept state instead of evaluation

    @property
    def tokens_per_second(self) -> float:
        if self.generation_seconds <= 0:
            return 0.0
        return self.n_tokens / self.generation_seconds


class Generation:
    """One request: queued, then running in the worker thread, then done."""

    def __init__(
        self,
        engine: ChatEngine,
        prompt: list[int],
        max_new_tokens: int,
        logits_processor: LogitsProcessor | None,
        key: str | None = None,
    ) -> None:
        self.id = next(engine._ids)
        self.key = key
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.logits_processor = logits_processor
        self.started = asyncio.Event()
        self._engine = engine
        self._deltas: asyncio.Queue[str | None] = asyncio.Queue()
        self._result: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        self._cancel = threading.Event()

    @property
    def position(self) -> int:
        """0 while running or done, otherwise how many requests are ahead plus one."""
        return self._engine.position_of(self)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop within one token; the text produced so far stays in the result."""
        self._cancel.set()

    async def stream(self) -> AsyncIterator[str]:
        while (delta := await self._deltas.get()) is not None:
            yield delta

    async def result(self) -> GenerationResult:
        return await asyncio.shield(self._result)

    @property
    def done(self) -> bool:
        return self._result.done()


class ChatEngine:
    def __init__(
        self,
        llama: LlamaLike,
        *,
        n_ctx: int,
        stop_ids: set[int],
        sampling: SamplingParams | None = None,
        state_cache: StateCache | None = None,
    ) -> None:
        self._llama = llama
        self.state_cache = state_cache
        # The conversation the live context belongs to; None when nobody may claim it.
        self._live_key: str | None = None
        self.n_ctx = n_ctx
        self._stop_ids = stop_ids | {llama.token_eos()}
        self.sampling = sampling or SamplingParams()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._queue: deque[Generation] = deque()
        self._running: Generation | None = None
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._ids = itertools.count(1)
        # llama.cpp asks this between the steps of a batch's evaluation. A 512-token batch of
        # a 13B model takes about a minute on a CPU; a cancel must not wait for all of it.
        # Only set while a prompt is fed: during generation a cancel takes effect at the next
        # token anyway, and a Python call for every graph step would slow each token down.
        self._feeding: Generation | None = None
        self._abort = llama_cpp.ggml_abort_callback(self._abort_requested)

    @property
    def stop_ids(self) -> frozenset[int]:
        return frozenset(self._stop_ids)

    @property
    def queue_length(self) -> int:
        return len(self._queue) + (1 if self._running else 0)

    def position_of(self, generation: Generation) -> int:
        if generation not in self._queue:
            return 0
        # A cancelled request ahead will be skipped: it does not make anybody wait.
        ahead = itertools.takewhile(lambda other: other is not generation, self._queue)
        waiting = sum(1 for other in ahead if not other.cancelled)
        return waiting + 1 + (1 if self._running else 0)

    def submit(
        self,
        prompt: list[int],
        *,
        max_new_tokens: int,
        logits_processor: LogitsProcessor | None = None,
        key: str | None = None,
    ) -> Generation:
        """Queue a prompt; prompt plus reply is capped at `n_ctx` whatever is asked.

        `key` names the conversation (for example f"{user_id}:{chat_id}") so that its model
        state can be kept and restored; without it only the live context's prefix is reused.
        """
        if self._closed:
            raise RuntimeError("the engine is closed")
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.n_ctx:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit n_ctx={self.n_ctx}")
        cap = min(max_new_tokens, self.n_ctx - len(prompt))
        generation = Generation(self, list(prompt), cap, logits_processor, key)
        self._queue.append(generation)
        if self._worker is None:
            self._wakeup = asyncio.Event()
            self._worker = asyncio.create_task(self._work(), name="llama-dispatch")
        assert self._wakeup is not None
        self._wakeup.set()
        return generation

    async def _work(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while not self._closed:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            generation = self._queue.popleft()
            if generation.cancelled:
                self._finish_unstarted(generation)
                continue
            self._running = generation
            generation.started.set()
            try:
                result = await loop.run_in_executor(
                    self._executor, self._generate_blocking, generation, loop
                )
            except Exception as exc:
                logger.exception("generation %d failed", generation.id)
                generation._result.set_exception(exc)
            else:
                generation._result.set_result(result)
            finally:
                generation._deltas.put_nowait(None)
                self._running = None

    def _finish_unstarted(self, generation: Generation) -> None:
        generation.started.set()
        generation._deltas.put_nowait(None)
        generation._result.set_result(
            GenerationResult("", 0, len(generation.prompt), 0, "cancelled", 0.0, 0.0)
        )

    def _switch_context(self, generation: Generation, prompt: npt.NDArray[np.intc]) -> int:
        """Make the context hold the longest available prefix of the prompt.

        Returns how many prompt tokens a kept state supplied (0 when the live context is used).
        """
        cache, llama, key = self.state_cache, self._llama, generation.key
        if cache is None or (key is not None and key == self._live_key):
            self._live_key = key
            return 0
        # Fetch this conversation's state before keeping the live one, whose arrival could
        # otherwise push it out of the budget.
        state = None
        kept = cache.tokens(key) if key is not None else None
        if key is not None and kept is not None:
            useful = common_prefix(kept, prompt)
            # The live context may do as well (say, the same system prompt): then keep it.
            if useful > common_prefix(llama.input_ids[: llama.n_tokens], prompt):
                state = cache.load(key)
        if self._live_key is not None and llama.n_tokens > 0:
            # Another conversation is about to overwrite the context: keep this one first.
            try:
                cache.put(self._live_key, capture(llama))
            except (RuntimeError, MemoryError) as exc:
                logger.warning("could not keep a conversation's state: %s", exc)
        self._live_key = key
        if state is None:
            return 0
        if not restore(llama, state):
            logger.warning("llama.cpp refused a kept state; evaluating the prompt in full")
            assert key is not None
            cache.drop(key)
            return 0
        restored = min(common_prefix(state.tokens, prompt), len(prompt) - 1)
        logger.debug("restored %d of %d prompt tokens", restored, len(prompt))
        return restored

    def _feed_prompt(self, generation: Generation) -> int | None:
        """Evaluate the prompt, reusing the context's matching prefix.

        Returns how many tokens were evaluated, or None when cancelled midway.
        """
        llama, prompt = self._llama, generation.prompt
        prefix = common_prefix(llama.input_ids[: llama.n_tokens], np.asarray(prompt, np.intc))
        # The last prompt token is always evaluated again: sampling needs its fresh logits.
        prefix = min(prefix, len(prompt) - 1)
        llama.n_tokens = prefix
        if generation.cancelled:
            return None
        self._feeding = generation
        llama_cpp.llama_set_abort_callback(llama.ctx, self._abort, None)
        try:
            llama.eval(prompt[prefix:])
        except RuntimeError:
            # An aborted batch leaves n_tokens at the last whole batch; any cells past it are
            # removed before the next evaluation or capture, so the context stays consistent.
            if generation.cancelled:
                return None
            raise
        finally:
            llama_cpp.llama_set_abort_callback(llama.ctx, llama_cpp.ggml_abort_callback(), None)
            self._feeding = None
        return len(prompt) - prefix

    def _abort_requested(self, _data: object) -> bool:
        feeding = self._feeding
        return feeding is not None and feeding.cancelled

    def _generate_blocking(
        self, generation: Generation, loop: asyncio.AbstractEventLoop
    ) -> GenerationResult:
        def emit(delta: str) -> None:
            loop.call_soon_threadsafe(generation._deltas.put_nowait, delta)

        started = time.perf_counter()
        restored = self._switch_context(generation, np.asarray(generation.prompt, np.intc))
        evaluated = self._feed_prompt(generation)
        prompt_seconds = time.perf_counter() - started
        if evaluated is None:
            return GenerationResult(
                "", 0, len(generation.prompt), 0, "cancelled", prompt_seconds, 0.0, restored
            )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces: list[str] = []
        n_tokens = 0
        finish: FinishReason = "length"
        sampling = self.sampling
        tokens = self._llama.generate(
            generation.prompt,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=0.0,
            temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty,
            logits_processor=[generation.logits_processor] if generation.logits_processor else None,
        )
        gen_started = time.perf_counter()
        assert isinstance(tokens, Generator)
        with contextlib.closing(tokens):
            for token in tokens:
                if generation.cancelled:
                    finish = "cancelled"
                    break
                if token in self._stop_ids:
                    finish = "stop"
                    break
                n_tokens += 1
                delta = decoder.decode(self._llama.detokenize([token]))
                if delta:
                    pieces.append(delta)
                    emit(delta)
                # Stop before the generator evaluates this token: prompt plus reply stays
                # within n_ctx even when llama.cpp's own checks would not.
                if n_tokens >= generation.max_new_tokens:
                    break
        tail = decoder.decode(b"", final=True)
        if tail:
            pieces.append(tail)
            emit(tail)
        return GenerationResult(
            text="".join(pieces),
            n_tokens=n_tokens,
            n_prompt=len(generation.prompt),
            n_prompt_evaluated=evaluated,
            finish_reason=finish,
            prompt_seconds=prompt_seconds,
            generation_seconds=time.perf_counter() - gen_started,
            n_prompt_restored=restored,
        )

    async def invalidate(self, key: str) -> None:
        """The conversation's beginning changed (/reset, /system): its kept state is useless."""
        await self._on_worker(self._drop_blocking, key, False)

    async def forget(self, key: str) -> None:
        """Erase every trace of the conversation: kept states, files, and the live context."""
        await self._on_worker(self._drop_blocking, key, True)

    async def _on_worker(self, function: Callable[[str, bool], None], *args: Any) -> None:
        # Runs between two generations, never during one: the executor has one thread.
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        except RuntimeError:
            if not self._closed:
                raise
            function(*args)  # the worker is gone after close(); nothing else uses the context

    def _drop_blocking(self, key: str, scrub_live: bool) -> None:
        if self.state_cache is not None:
            self.state_cache.drop(key)
        if self._live_key == key:
            self._live_key = None
            if scrub_live and not self._closed:
                scrub(self._llama)

    def cancel_all(self) -> None:
        for generation in list(self._queue):
            generation.cancel()
        if self._running is not None:
            self._running.cancel()

    async def close(self) -> None:
        """Cancel everything, wait for the worker thread to let go, free the model."""
        self.cancel_all()
        self._closed = True
        if self._worker is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for generation in self._queue:
            self._finish_unstarted(generation)
        self._queue.clear()
        self._executor.shutdown(wait=True)
        self._llama.close()
