"""One remote request: waiting for a server and a slot, then streaming, then done.

A request runs as one asyncio task. `cancel()` cancels that task; closing the HTTP stream is
what tells the server to stop (llama-server notices the closed connection at its next token).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from models.remote.pieces import Detokenizer, Pieces
from models.runtime.generation import FinishReason, GenerationResult

if TYPE_CHECKING:
    from models.remote.engine import RemoteEngine


class RemoteGeneration:
    def __init__(
        self,
        engine: RemoteEngine,
        prompt: list[int],
        max_new_tokens: int,
        key: str | None,
        *,
        ignore_eos: bool = False,
    ) -> None:
        self.prompt = prompt
        # The bench's throughput runs: exactly max_new_tokens, whatever the model samples.
        self.ignore_eos = ignore_eos
        self.stop_ids = frozenset() if ignore_eos else engine.stop_ids
        self.max_new_tokens = max_new_tokens
        self.key = key
        self.started = asyncio.Event()
        # Set while no server is up: the front end tells the user once that the reply waits.
        self.waiting_for_server = asyncio.Event()
        self.server: str | None = None  # the URL that served (or serves) the request
        self._engine = engine
        self._deltas: asyncio.Queue[str | None] = asyncio.Queue()
        self._result: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        self._cancelled = False
        self._task: asyncio.Task[None] | None = None
        self.reset_reply(engine.pieces)
        self.n_prompt_evaluated: int | None = None
        self.admitted_at = time.perf_counter()
        self.first_token_at: float | None = None

    def reset_reply(self, pieces: Pieces) -> None:
        """Before an attempt at a server: nothing of the reply has arrived yet."""
        self.generated: list[int] = []
        self.pieces: list[str] = []
        self.detokenizer = Detokenizer(pieces)
        self.n_seen = 0  # ids the server reported, stop tokens and recovered ones included
        self.last_stop: int | None = None

    def run(self, work: Callable[[RemoteGeneration], object]) -> None:
        self._task = asyncio.create_task(work(self), name="remote-generation")  # type: ignore[arg-type]

    @property
    def position(self) -> int:
        return self._engine.position_of(self)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        if self._cancelled or self._result.done():
            return
        self._cancelled = True
        if self._task is not None:
            self._task.cancel()

    async def stream(self) -> AsyncIterator[str]:
        while (delta := await self._deltas.get()) is not None:
            yield delta

    async def result(self) -> GenerationResult:
        return await asyncio.shield(self._result)

    @property
    def done(self) -> bool:
        return self._result.done()

    # -- called by the engine's request task --------------------------------------------------

    def add(self, token: int) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.generated.append(token)
        delta = self.detokenizer.add(token)
        if delta:
            self.pieces.append(delta)
            self._deltas.put_nowait(delta)

    def finish(self, reason: FinishReason, started: bool = True) -> GenerationResult:
        tail = self.detokenizer.end()
        if tail:
            self.pieces.append(tail)
            self._deltas.put_nowait(tail)
        now = time.perf_counter()
        first = self.first_token_at or now
        evaluated = self.n_prompt_evaluated
        result = GenerationResult(
            text="".join(self.pieces),
            n_tokens=len(self.generated),
            n_prompt=len(self.prompt),
            n_prompt_evaluated=(len(self.prompt) if evaluated is None else evaluated)
            if started
            else 0,
            finish_reason=reason,
            prompt_seconds=first - self.admitted_at if started else 0.0,
            generation_seconds=now - first,
        )
        self.settle(result, None)
        return result

    def settle(self, result: GenerationResult | None, exc: BaseException | None) -> None:
        self.started.set()
        if not self._result.done():
            if exc is not None:
                self._result.set_exception(exc)
            else:
                assert result is not None
                self._result.set_result(result)
        self._deltas.put_nowait(None)
