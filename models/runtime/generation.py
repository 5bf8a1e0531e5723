"""One request's handle: queued, then decoded on the worker thread beside others, then done.

The worker thread reports through the event loop (`call_soon_threadsafe`): deltas, the start,
the result. Everything a caller awaits lives on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from models.runtime.sampler import LogitsProcessor

if TYPE_CHECKING:
    from models.runtime.engine import ChatEngine

# "cut": a remote server failed in the middle of the reply; the text so far is kept.
FinishReason = Literal["stop", "length", "cancelled", "cut"]


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
    """One request: queued, then decoded in the worker thread beside others, then done."""

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
        self.waiting_for_server = asyncio.Event()  # never set: the model is in this process
        self.token_steps: list[int] = []  # the decode step each token was sampled after
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._deltas: asyncio.Queue[str | None] = asyncio.Queue()
        self._result: asyncio.Future[GenerationResult] = self._loop.create_future()
        self._cancel = threading.Event()

    @property
    def position(self) -> int:
        """0 while running or done, otherwise how many requests are ahead plus one."""
        return self._engine.position_of(self)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop within one step; the text produced so far stays in the result."""
        self._cancel.set()

    async def stream(self) -> AsyncIterator[str]:
        while (delta := await self._deltas.get()) is not None:
            yield delta

    async def result(self) -> GenerationResult:
        return await asyncio.shield(self._result)

    @property
    def done(self) -> bool:
        return self._result.done()

    # -- called from the worker thread --------------------------------------------------------

    def _post(self, function: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            self._loop.call_soon_threadsafe(function, *args)

    def begin(self) -> None:
        self._post(self.started.set)

    def emit(self, delta: str) -> None:
        self._post(self._deltas.put_nowait, delta)

    def complete(self, result: GenerationResult) -> None:
        self._post(self._settle, result, None)

    def fail(self, exc: BaseException) -> None:
        self._post(self._settle, None, exc)

    def _settle(self, result: GenerationResult | None, exc: BaseException | None) -> None:
        self.started.set()
        if not self._result.done():
            if exc is not None:
                self._result.set_exception(exc)
            else:
                assert result is not None
                self._result.set_result(result)
        self._deltas.put_nowait(None)


def unstarted(generation: Generation) -> GenerationResult:
    return GenerationResult("", 0, len(generation.prompt), 0, "cancelled", 0.0, 0.0)
