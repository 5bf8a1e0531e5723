"""Generation behind an async interface.

One llama.cpp context is not thread-safe, so a single worker thread owns it and requests wait
in a FIFO queue. Callers get a `Generation` handle: its text deltas as an async iterator, its
place in the queue, `cancel()`, and the final result.
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
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled"]
LogitsProcessor = Callable[[npt.NDArray[np.intc], npt.NDArray[np.single]], npt.NDArray[np.single]]


class LlamaLike(Protocol):
    """The parts of `llama_cpp.Llama` the engine uses."""

    n_tokens: int
    input_ids: npt.NDArray[np.intc]

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
    ) -> None:
        self.id = next(engine._ids)
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
        n_batch: int = 512,
        stop_ids: set[int],
        sampling: SamplingParams | None = None,
    ) -> None:
        self._llama = llama
        self.n_ctx = n_ctx
        self._n_batch = n_batch
        self._stop_ids = stop_ids | {llama.token_eos()}
        self.sampling = sampling or SamplingParams()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._queue: deque[Generation] = deque()
        self._running: Generation | None = None
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._ids = itertools.count(1)

    @property
    def queue_length(self) -> int:
        return len(self._queue) + (1 if self._running else 0)

    def position_of(self, generation: Generation) -> int:
        try:
            return self._queue.index(generation) + 1 + (1 if self._running else 0)
        except ValueError:
            return 0

    def submit(
        self,
        prompt: list[int],
        *,
        max_new_tokens: int,
        logits_processor: LogitsProcessor | None = None,
    ) -> Generation:
        """Queue a prompt; prompt plus reply is capped at `n_ctx` whatever is asked."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.n_ctx:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit n_ctx={self.n_ctx}")
        cap = min(max_new_tokens, self.n_ctx - len(prompt))
        generation = Generation(self, list(prompt), cap, logits_processor)
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

    def _feed_prompt(self, generation: Generation) -> int | None:
        """Evaluate the prompt in batches, reusing the context's matching prefix.

        Returns how many tokens were evaluated, or None when cancelled midway: a long prompt
        takes minutes on a CPU and a cancel must not wait for all of it.
        """
        llama, prompt = self._llama, generation.prompt
        cached = llama.input_ids[: llama.n_tokens]
        prefix = 0
        for a, b in zip(cached, prompt, strict=False):
            if a != b:
                break
            prefix += 1
        # The last prompt token is always evaluated again: sampling needs its fresh logits.
        prefix = min(prefix, len(prompt) - 1)
        llama.n_tokens = prefix
        for start in range(prefix, len(prompt), self._n_batch):
            if generation.cancelled:
                return None
            llama.eval(prompt[start : start + self._n_batch])
        return len(prompt) - prefix

    def _generate_blocking(
        self, generation: Generation, loop: asyncio.AbstractEventLoop
    ) -> GenerationResult:
        def emit(delta: str) -> None:
            loop.call_soon_threadsafe(generation._deltas.put_nowait, delta)

        started = time.perf_counter()
        evaluated = self._feed_prompt(generation)
        prompt_seconds = time.perf_counter() - started
        if evaluated is None:
            return GenerationResult(
                "", 0, len(generation.prompt), 0, "cancelled", prompt_seconds, 0.0
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
        )

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
