"""`domovoy bench --engine-url URL`: the bench's figures for ENGINE=remote.

The same workload and the same names as the local bench (`models.runtime.bench`), measured
through the remote engine against running llama-server(s):

- ttft_cached_s / ttft_cold_s: a follow-up after other users spoke, reusing its own slot's
  cached tokens (`cache_prompt`), and the same prompt as a conversation the server never saw;
  follow_up_evaluated_tokens are the server's own `timings.prompt_n`.
- throughput_ratio: tokens per second through the engine (HTTP, SSE, UTF-8-safe decoding
  into the event loop) over streaming straight from the same server.
- aggregate_speedup, per_user_ratio, busy_ttft_s, idle_ttft_s: as locally, on the servers'
  slots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

from models.engines import GenerationHandle
from models.files.gguf_info import read_gguf_info
from models.prompt.templates import ChatMessage
from models.remote.engine import RemoteEngine
from models.remote.loader import RemoteConfig, load_remote_model
from models.runtime.bench import (
    BenchOptions,
    bench_settings,
    build_history,
    rounded,
    sample_text,
)
from models.runtime.bench_parallel import Runner, StartStream, aggregate, busy_ttft, rate
from models.runtime.bench_server import server_runner, stream_times
from models.runtime.chat_model import ChatModel
from models.runtime.generation import GenerationResult
from models.runtime.sampler import SamplingParams


async def run_remote_bench(
    options: BenchOptions,
    urls: list[str],
    progress: Callable[[str], None] = lambda _: None,
    api_key: str | None = None,
) -> dict[str, Any]:
    config = RemoteConfig(
        model_path=options.model_path,
        urls=urls,
        template=options.template,
        max_new_tokens=options.gen_tokens,
        api_key=api_key,
        api="llama-server",
        n_ctx=options.n_ctx,
        sampling=dataclasses.replace(SamplingParams(), seed=1),
    )
    model = await load_remote_model(config)
    engine = model.engine
    assert isinstance(engine, RemoteEngine)
    try:
        report, prompts = await _follow_ups(model, engine, options, progress)
        report.update(await _throughput(engine, urls[0], api_key, prompts[0], options, progress))
        system = model.default_system_prompt
        short = [
            model.build_prompt(system, [ChatMessage("user", sample_text(u, 7, "user"))]).tokens
            for u in range(4)
        ]
        others = {"llama_server": server_runner(urls[0], engine.sampling, api_key)}
        report.update(
            await aggregate(
                model,
                short,
                options.gen_tokens,
                options.rounds,
                progress,
                others,
                ours=_runner(engine),
            )
        )
        report.update(
            await busy_ttft(
                model,
                system,
                build_history(model, system, 0, options.history_tokens),
                short,
                options.reply_tokens,
                options.gen_tokens,
                progress,
                start_stream=_unstoppable(engine),
            )
        )
        report["settings"]["parallel"] = engine.parallel
        report["engine"] = {"kind": "remote", "urls": urls}
        report["model"] = _shape(options)
    finally:
        await model.close()
    return report


async def _first_delta(
    engine: RemoteEngine, prompt: list[int], key: str, n_tokens: int
) -> tuple[float, GenerationResult]:
    started = time.perf_counter()
    generation = engine.submit(prompt, max_new_tokens=n_tokens, key=key)
    arrivals = [time.perf_counter() async for _ in generation.stream()]
    result = await generation.result()
    if not arrivals:
        raise RuntimeError("the model produced no text; the benchmark needs a chatty model")
    return arrivals[0] - started, result


async def _follow_ups(
    model: ChatModel, engine: RemoteEngine, options: BenchOptions, progress: Callable[[str], None]
) -> tuple[dict[str, Any], dict[int, list[int]]]:
    system = model.default_system_prompt
    users = range(options.users)
    histories = {u: build_history(model, system, u, options.history_tokens) for u in users}

    def prompt(u: int) -> list[int]:
        window = model.build_prompt(system, histories[u], key=f"u{u}")
        if window.dropped_turns:
            raise ValueError("the history does not fit; ask for fewer --history-tokens")
        return window.tokens

    for u in users:
        histories[u].append(ChatMessage("user", sample_text(u, 99, "user")))
        progress(f"conversation {u + 1}/{options.users}: evaluating its history on the server")
        _, result = await _first_delta(engine, prompt(u), f"u{u}", options.reply_tokens)
        histories[u].append(ChatMessage("bot", result.text))

    prompts: dict[int, list[int]] = {}
    new_turn: list[int | None] = []
    cached: list[GenerationResult] = []
    ttft_cached: list[float] = []
    for u in users:
        histories[u].append(ChatMessage("user", sample_text(u, 100, "user")))
        prompts[u] = prompt(u)
        before = engine.transcript(f"u{u}")
        assert before is not None
        spliced = prompts[u][: len(before.prompt)] == list(before.prompt)
        new_turn.append(
            len(prompts[u]) - len(before.prompt) - len(before.generated) if spliced else None
        )
        seconds, result = await _first_delta(engine, prompts[u], f"u{u}", options.reply_tokens)
        progress(f"follow-up {u + 1} on its own slot's cache: {seconds:.2f} s to the first token")
        ttft_cached.append(seconds)
        cached.append(result)

    # The same prompts as conversations the server has no cells of: evaluated in full.
    ttft_cold: list[float] = []
    cold: list[GenerationResult] = []
    for u in users:
        seconds, result = await _first_delta(engine, prompts[u], f"cold{u}", options.reply_tokens)
        progress(f"follow-up {u + 1} evaluated in full: {seconds:.2f} s to the first token")
        ttft_cold.append(seconds)
        cold.append(result)

    cold_s, cached_s = statistics.median(ttft_cold), statistics.median(ttft_cached)
    report = {
        "ttft_cold_s": round(cold_s, 3),
        "ttft_cached_s": round(cached_s, 3),
        "ttft_ratio": round(cached_s / cold_s, 4),
        "settings": bench_settings(options, engine.n_ctx),
        "follow_up_prompt_tokens": [r.n_prompt for r in cached],
        "follow_up_restored_tokens": [r.n_prompt - r.n_prompt_evaluated for r in cached],
        "follow_up_evaluated_tokens": {
            "cached": [r.n_prompt_evaluated for r in cached],
            "cold": [r.n_prompt_evaluated for r in cold],
        },
        "new_turn_tokens": new_turn,
        "ttft_s": {"cached": rounded(ttft_cached), "cold": rounded(ttft_cold)},
        "state_bytes_per_token": None,  # the states live on the server
    }
    return report, prompts


def _unstoppable(engine: RemoteEngine) -> StartStream:
    def start(prompt: list[int], n_tokens: int, key: str) -> GenerationHandle:
        return engine.submit(prompt, max_new_tokens=n_tokens, key=key, ignore_eos=True)

    return start


async def _arrivals(generation: GenerationHandle) -> list[float]:
    times = [time.perf_counter() async for _ in generation.stream()]
    await generation.result()
    return times


def _runner(engine: RemoteEngine) -> Runner:
    start = _unstoppable(engine)

    async def run(prompts: list[list[int]], n_tokens: int, tag: str) -> list[list[float]]:
        generations = [start(p, n_tokens, f"{tag}{i}") for i, p in enumerate(prompts)]
        return list(await asyncio.gather(*(_arrivals(g) for g in generations)))

    return run


async def _throughput(
    engine: RemoteEngine,
    url: str,
    api_key: str | None,
    prompt: list[int],
    options: BenchOptions,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """One stream: straight from the server against through the engine, alternating."""
    start = _unstoppable(engine)
    raw_runs: list[float] = []
    pipeline_runs: list[float] = []
    await _arrivals(start(prompt, 8, "warm-up"))
    for attempt in range(options.rounds):
        raw = await asyncio.to_thread(
            stream_times, url, prompt, options.gen_tokens, engine.sampling, api_key
        )
        raw_runs.append(rate(raw))
        arrivals = await _arrivals(start(prompt, options.gen_tokens, f"t{attempt}"))
        pipeline_runs.append(rate(arrivals))
        progress(
            f"throughput run {attempt + 1}/{options.rounds}: straight from the server "
            f"{raw_runs[-1]:.2f} tok/s, through the engine {pipeline_runs[-1]:.2f} tok/s"
        )
    raw_rate, pipeline_rate = statistics.median(raw_runs), statistics.median(pipeline_runs)
    return {
        "raw_tokens_per_s": round(raw_rate, 2),
        "pipeline_tokens_per_s": round(pipeline_rate, 2),
        "throughput_ratio": round(pipeline_rate / raw_rate, 4),
        "tokens_per_s_runs": {"raw": rounded(raw_runs), "pipeline": rounded(pipeline_runs)},
    }


def _shape(options: BenchOptions) -> dict[str, Any]:
    info = read_gguf_info(options.model_path)
    return {
        "path": str(options.model_path),
        "architecture": info.architecture,
        "n_params": info.parameter_count,
        "file_bytes": info.file_size,
        "n_vocab": info.vocab_size,
        "n_ctx_train": info.context_length,
    }
