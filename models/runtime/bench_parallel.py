"""`domovoy bench`, the part about several conversations at once.

aggregate_speedup: tokens per second of N conversations generating together (all of them)
over one generating alone; per_user_ratio: what each of the N gets, over one alone.
busy_ttft_s: time to the first token of a cached follow-up that arrives while three other
replies stream; idle_ttft_s: the same kind of follow-up with nothing else running.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from models.engines import GenerationHandle
from models.prompt.templates import ChatMessage
from models.runtime.chat_model import ChatModel
from models.runtime.engine import ChatEngine, LogitsProcessor


def no_stop(stop_ids: Sequence[int]) -> LogitsProcessor:
    """Every throughput run generates exactly the tokens asked for."""
    banned = np.asarray(sorted(stop_ids), dtype=np.intp)

    def processor(
        input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        scores[banned] = -np.inf
        return scores

    return processor


def timed_no_stop(stop_ids: Sequence[int], times: list[float]) -> LogitsProcessor:
    """`no_stop` that also notes when each token was sampled (on the worker thread)."""
    inner = no_stop(stop_ids)

    def processor(
        input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        times.append(time.perf_counter())
        return inner(input_ids, scores)

    return processor


def rate(times: Sequence[float]) -> float:
    # The median gap between tokens: other processes on a shared machine stall some tokens,
    # and a mean over a run would charge those stalls to whichever side they happened to hit.
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    return 1.0 / statistics.median(gaps)


async def streams(
    model: ChatModel, prompts: Sequence[list[int]], n_tokens: int, tag: str
) -> list[list[float]]:
    """Generate from every prompt at once; each stream's token times."""
    engine = model.engine
    assert isinstance(engine, ChatEngine)  # the logits processor times tokens in-process
    times: list[list[float]] = [[] for _ in prompts]
    generations = [
        engine.submit(
            prompt,
            max_new_tokens=n_tokens,
            key=f"{tag}{i}",
            logits_processor=timed_no_stop(sorted(engine.stop_ids), times[i]),
        )
        for i, prompt in enumerate(prompts)
    ]
    await asyncio.gather(*(g.result() for g in generations))
    return times


Runner = Callable[[list[list[int]], int, str], Awaitable[list[list[float]]]]


def summary(best: dict[int, float]) -> dict[str, dict[str, float]]:
    alone = best[1]
    counts = sorted(best)
    return {
        "tokens_per_s": {str(n): round(best[n], 2) for n in counts},
        "aggregate_speedup": {str(n): round(best[n] / alone, 3) for n in counts if n > 1},
        "per_user_ratio": {str(n): round(best[n] / n / alone, 3) for n in counts if n > 1},
    }


def local_runner(model: ChatModel) -> Runner:
    async def run(chosen: list[list[int]], n: int, tag: str) -> list[list[float]]:
        return await streams(model, chosen, n, tag)

    return run


async def aggregate(
    model: ChatModel,
    prompts: Sequence[list[int]],
    n_tokens: int,
    rounds: int,
    progress: Callable[[str], None],
    others: dict[str, Runner] | None = None,
    ours: Runner | None = None,
) -> dict[str, Any]:
    """Tokens per second of 1, 2 and 4 (up to PARALLEL) streams together; `others` (say,
    llama.cpp's server) run the same workload in turn with the bot, so that both meet the
    same load on a shared machine. `ours`: how the bot's engine runs them (default: local)."""
    counts = sorted({1, *(n for n in (2, 4) if n <= model.engine.parallel)})
    runners: dict[str, Runner] = {"bot": ours or local_runner(model), **(others or {})}
    best: dict[str, dict[int, float]] = {name: {} for name in runners}
    widest = [prompts[i % len(prompts)] for i in range(max(counts))]
    for name, runner in runners.items():
        # Unmeasured: the first tokens in each sequence touch its KV pages for the first time.
        await runner(widest, 8, f"warm-up.{name}.")
    for attempt in range(rounds):
        for n in counts:
            for name, runner in runners.items():
                times = await runner(widest[:n], n_tokens, f"agg{attempt}.{n}.")
                total = sum(rate(t) for t in times)
                best[name][n] = max(best[name].get(n, 0.0), total)
                progress(f"{name}, {n} conversation(s) at once: {total:.1f} tokens/s in all")
    report: dict[str, Any] = summary(best.pop("bot"))
    for name, figures in best.items():
        report[name] = summary(figures)
    return report


async def first_token(model: ChatModel, prompt: list[int], key: str, n_tokens: int) -> float:
    started = time.perf_counter()
    generation = model.engine.submit(prompt, max_new_tokens=n_tokens, key=key)
    async for _ in generation.stream():
        break
    seconds = time.perf_counter() - started
    await generation.result()
    return seconds


StartStream = Callable[[list[int], int, str], GenerationHandle]


def local_stream(engine: ChatEngine) -> StartStream:
    """A reply of exactly the tokens asked for, on the local engine."""

    def start(prompt: list[int], n_tokens: int, key: str) -> GenerationHandle:
        return engine.submit(
            prompt,
            max_new_tokens=n_tokens,
            key=key,
            logits_processor=no_stop(sorted(engine.stop_ids)),
        )

    return start


async def busy_ttft(
    model: ChatModel,
    system: str | None,
    history: list[ChatMessage],
    stream_prompts: Sequence[list[int]],
    reply_tokens: int,
    gen_tokens: int,
    progress: Callable[[str], None],
    start_stream: StartStream | None = None,
) -> dict[str, float]:
    """A conversation with a long history asks again, once while three others stream and
    once with nothing else running; its state is kept in between either way.
    `start_stream`: how the three others are started (default: on the local engine)."""
    engine = model.engine
    if start_stream is None:
        assert isinstance(engine, ChatEngine)
        start_stream = local_stream(engine)
    key = "busy-follow-up"
    history = list(history)

    def ask(text: str) -> list[int]:
        history.append(ChatMessage("user", text))
        return model.build_prompt(system, history, key=key).tokens

    async def answer(prompt: list[int]) -> float:
        started = time.perf_counter()
        generation = engine.submit(prompt, max_new_tokens=reply_tokens, key=key)
        pieces: list[str] = []
        seconds = 0.0
        async for delta in generation.stream():
            if not pieces:
                seconds = time.perf_counter() - started
            pieces.append(delta)
        await generation.result()
        history.append(ChatMessage("bot", "".join(pieces)))
        return seconds

    await answer(ask("Расскажи, что было раньше?"))  # the history is evaluated once
    idle = await answer(ask("А что было потом?"))
    others = max(0, min(3, engine.parallel - 1))
    streaming = [
        start_stream(stream_prompts[i % len(stream_prompts)], gen_tokens * 4, f"streaming{i}")
        for i in range(others)
    ]

    async def streaming_now(generation: GenerationHandle) -> None:
        seen = 0
        async for _ in generation.stream():
            seen += 1
            if seen == 3:
                return

    await asyncio.gather(*(streaming_now(g) for g in streaming))
    busy = await answer(ask("И чем всё закончилось?"))
    running = sum(1 for g in streaming if not g.done)
    for generation in streaming:
        generation.cancel()
    await asyncio.gather(*(g.result() for g in streaming))
    progress(f"follow-up beside {running} streaming replies: {busy:.3f} s to the first token")
    return {"busy_ttft_s": round(busy, 3), "idle_ttft_s": round(idle, 3), "busy_streams": running}
