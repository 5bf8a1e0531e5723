"""`domovoy bench`: what kept conversation states buy, what the streaming path costs, and
what decoding several conversations together gives.

Time to first token of a follow-up after another user spoke, with the conversation's kept
state and without it (a full evaluation), on a one-sequence context so that the state really
goes through the cache; tokens per second of llama-cpp-python alone against the bot's
generation path (worker thread, scheduler, UTF-8 safe streaming into the event loop); then,
on a context of PARALLEL sequences, see `bench_parallel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_cpp import Llama

from models.prompt.templates import ChatMessage
from models.runtime.bench_parallel import aggregate, busy_ttft, no_stop
from models.runtime.bench_server import llama_server, server_runner
from models.runtime.chat_model import ChatModel, load_chat_model
from models.runtime.engine import ChatEngine, GenerationResult, LogitsProcessor
from models.runtime.loader import ModelConfig, load_llama
from models.runtime.state_cache import StateCacheConfig

logger = logging.getLogger(__name__)

SENTENCES = [
    "Домовой живёт в доме и помогает хозяевам, следит за порядком и охраняет семью.",
    "Как приготовить борщ? Нужны свёкла, капуста, картофель, морковь, лук и немного мяса.",
    "Москва — столица России, Санкт-Петербург стоит на Неве, а Волга впадает в Каспийское море.",
    "Что такое нейронная сеть? Это модель, которая учится на данных и делает предсказания.",
    "Расскажи мне сказку про кота и лису: жили-были дед да баба, и была у них курочка Ряба.",
    "Мороз и солнце; день чудесный! Ещё ты дремлешь, друг прелестный, пора, красавица, проснись.",
    "Где находится ближайшая библиотека? Она на соседней улице, рядом с почтой и парком.",
]


@dataclass(frozen=True)
class BenchOptions:
    model_path: Path
    history_tokens: int = 1500
    users: int = 3
    n_ctx: int = 2048
    n_threads: int | None = None
    n_batch: int = 512
    template: str = "gigasaiga"
    reply_tokens: int = 16  # replies while the conversations are built
    gen_tokens: int = 64  # tokens per throughput run
    rounds: int = 3  # throughput runs of each kind, alternating
    parallel: int = 4  # sequences of the context for the several-at-once figures
    llama_server: Path | None = None  # llama.cpp's server binary, for the same workload


def local_engine(model: ChatModel) -> ChatEngine:
    """The parts of the bench that measure llama.cpp in this process."""
    if not isinstance(model.engine, ChatEngine):
        raise TypeError("this part of the bench needs the local engine")
    return model.engine


def sample_text(user: int, turn: int, role: str) -> str:
    first = SENTENCES[(user + turn) % len(SENTENCES)]
    second = SENTENCES[(user * 3 + turn * 5 + (role == "bot")) % len(SENTENCES)]
    return f"{role} {user}.{turn}: {first} {second}"


def bench_settings(options: BenchOptions, n_ctx: int) -> dict[str, Any]:
    """What a report was measured with."""
    return {
        "n_ctx": n_ctx,
        "n_batch": options.n_batch,
        "n_threads": options.n_threads,
        "template": options.template,
        "users": options.users,
        "history_tokens": options.history_tokens,
        "gen_tokens": options.gen_tokens,
        "rounds": options.rounds,
    }


def build_history(
    model: ChatModel, system: str | None, user: int, n_tokens: int
) -> list[ChatMessage]:
    """A stored conversation of about `n_tokens` tokens (whole turns) for one user."""
    history: list[ChatMessage] = []
    turn = 0
    while True:
        turn_messages = [
            ChatMessage("user", sample_text(user, turn, "user")),
            ChatMessage("bot", sample_text(user, turn, "bot")),
        ]
        candidate = [*history, *turn_messages]
        size = len(
            model.template.encode(
                [ChatMessage("system", system or ""), *candidate], model.tokenizer
            )
        )
        if size > n_tokens and history:
            return history
        history = candidate
        turn += 1


async def _timed(
    model: ChatModel,
    prompt: list[int],
    key: str | None,
    max_new_tokens: int,
    processor: LogitsProcessor | None = None,
) -> tuple[float, list[float], GenerationResult]:
    """Seconds to the first streamed text, arrival times of every delta, the result."""
    started = time.perf_counter()
    generation = local_engine(model).submit(
        prompt, max_new_tokens=max_new_tokens, key=key, logits_processor=processor
    )
    arrivals = [time.perf_counter() async for _ in generation.stream()]
    result = await generation.result()
    if not arrivals:
        raise RuntimeError("the model produced no text; the benchmark needs a chatty model")
    return arrivals[0] - started, arrivals, result


def _raw_arrivals(
    llama: Llama,
    prompt: list[int],
    n_tokens: int,
    processor: LogitsProcessor,
    sampling: dict[str, Any],
) -> list[float]:
    times: list[float] = []
    for _ in llama.generate(prompt, logits_processor=[processor], **sampling):  # type: ignore[arg-type]
        times.append(time.perf_counter())
        if len(times) == n_tokens:
            break
    return times


def _gaps(arrivals: Sequence[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(arrivals)]


def _rate(gaps: Sequence[float]) -> float:
    # The median gap between tokens: other processes on a shared machine stall some tokens,
    # and a mean over a run would charge those stalls to whichever side they happened to hit.
    return 1.0 / statistics.median(gaps)


def model_shape(llama: Llama, path: Path) -> dict[str, Any]:
    import llama_cpp

    meta = llama.metadata
    arch = meta.get("general.architecture", "")
    return {
        "path": str(path),
        "architecture": arch,
        "n_params": int(llama_cpp.llama_model_n_params(llama.model)),
        "file_bytes": path.stat().st_size,
        "file_type": int(meta.get("general.file_type", "-1")),
        "n_embd": int(meta.get(f"{arch}.embedding_length", "0")),
        "n_layer": int(meta.get(f"{arch}.block_count", "0")),
        "n_head": int(meta.get(f"{arch}.attention.head_count", "0")),
        "n_ff": int(meta.get(f"{arch}.feed_forward_length", "0")),
        "n_vocab": llama.n_vocab(),
        "n_ctx_train": int(meta.get(f"{arch}.context_length", "0")),
    }


async def run_bench(
    options: BenchOptions, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    config = ModelConfig(
        model_path=options.model_path,
        n_ctx=options.n_ctx,
        n_threads=options.n_threads,
        n_batch=options.n_batch,
        seed=1,
    )

    def load(parallel: int) -> ChatModel:
        return load_chat_model(
            config,
            template=options.template,
            max_new_tokens=options.gen_tokens,
            state_cache=StateCacheConfig(ram_bytes=64 * 2**30),
            parallel=parallel,
        )

    # One sequence: every other user's turn pushes a conversation out to the state cache.
    model = await asyncio.to_thread(load, 1)
    try:
        report, prompts = await _measure(model, options, progress)
    finally:
        await model.close()
    model = await asyncio.to_thread(load, options.parallel)
    try:
        report.update(await _throughput(model, config, options, prompts[0], progress))
        system = model.default_system_prompt
        short = [
            model.build_prompt(system, [ChatMessage("user", sample_text(u, 7, "user"))]).tokens
            for u in range(4)
        ]
        with contextlib.ExitStack() as stack:
            others = {}
            if options.llama_server is not None:
                progress("starting llama-server with the same model, slots and settings")
                port = await asyncio.to_thread(
                    stack.enter_context,
                    llama_server(
                        options.llama_server,
                        options.model_path,
                        parallel=model.engine.parallel,
                        n_ctx=options.n_ctx,
                        threads=options.n_threads or 1,
                        n_batch=options.n_batch,
                    ),
                )
                others["llama_server"] = server_runner(
                    f"http://127.0.0.1:{port}", local_engine(model).sampling
                )
            report.update(
                await aggregate(model, short, options.gen_tokens, options.rounds, progress, others)
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
            )
        )
        report["settings"]["parallel"] = model.engine.parallel
    finally:
        await model.close()
    return report


async def _measure(
    model: ChatModel,
    options: BenchOptions,
    progress: Callable[[str], None],
) -> tuple[dict[str, Any], dict[int, list[int]]]:
    engine = local_engine(model)
    cache = engine.state_cache
    assert cache is not None
    system = model.default_system_prompt
    users = range(options.users)
    if options.history_tokens + 200 > options.n_ctx - options.gen_tokens:
        raise ValueError(
            f"a history of {options.history_tokens} tokens leaves no room for the follow-ups "
            f"in n_ctx={options.n_ctx}; ask for fewer --history-tokens"
        )
    histories = {u: build_history(model, system, u, options.history_tokens) for u in users}

    def prompt(u: int) -> list[int]:
        # Keyed: the previous reply goes in as the ids the model generated.
        window = model.build_prompt(system, histories[u], key=f"u{u}")
        if window.dropped_turns:
            raise ValueError("the history does not fit; ask for fewer --history-tokens")
        return window.tokens

    # Each user asks once: the replies are what a bot would store, and their states are kept.
    for u in users:
        histories[u].append(ChatMessage("user", sample_text(u, 99, "user")))
        progress(f"conversation {u + 1}/{options.users}: evaluating its history")
        _, _, result = await _timed(model, prompt(u), f"u{u}", options.reply_tokens)
        histories[u].append(ChatMessage("bot", result.text))

    # Follow-ups, interleaved: another user always ran in between.
    prompts: dict[int, list[int]] = {}
    new_turn: list[int | None] = []
    cached: list[GenerationResult] = []
    ttft_cached: list[float] = []
    for u in users:
        histories[u].append(ChatMessage("user", sample_text(u, 100, "user")))
        prompts[u] = prompt(u)
        before = engine.transcript(f"u{u}")
        spliced = before is not None and prompts[u][: len(before.prompt)] == list(before.prompt)
        assert before is not None
        new_turn.append(
            len(prompts[u]) - len(before.prompt) - len(before.generated) if spliced else None
        )
        seconds, _, result = await _timed(model, prompts[u], f"u{u}", options.reply_tokens)
        progress(f"follow-up {u + 1} with its kept state: {seconds:.2f} s to the first token")
        ttft_cached.append(seconds)
        cached.append(result)
    state_bytes = cache.stats.ram_bytes
    state_tokens = sum(len(t) for k in cache.ram_keys() if (t := cache.tokens(k)) is not None)

    # The same follow-ups without kept states: each is evaluated again, as it would be.
    engine.state_cache = None
    ttft_cold: list[float] = []
    cold: list[GenerationResult] = []
    for u in users:
        seconds, _, result = await _timed(model, prompts[u], f"u{u}", options.reply_tokens)
        progress(f"follow-up {u + 1} evaluated in full: {seconds:.2f} s to the first token")
        ttft_cold.append(seconds)
        cold.append(result)
    engine.state_cache = cache

    # Medians: a few requests hit by other processes' bursts do not decide the figure.
    cold_s, cached_s = statistics.median(ttft_cold), statistics.median(ttft_cached)
    report = {
        "ttft_cold_s": round(cold_s, 3),
        "ttft_cached_s": round(cached_s, 3),
        "ttft_ratio": round(cached_s / cold_s, 4),
        "settings": bench_settings(options, options.n_ctx),
        "follow_up_prompt_tokens": [r.n_prompt for r in cached],
        "follow_up_restored_tokens": [r.n_prompt_restored for r in cached],
        "follow_up_evaluated_tokens": {
            "cached": [r.n_prompt_evaluated for r in cached],
            "cold": [r.n_prompt_evaluated for r in cold],
        },
        "new_turn_tokens": new_turn,
        "ttft_s": {"cached": rounded(ttft_cached), "cold": rounded(ttft_cold)},
        "state_bytes_per_token": round(state_bytes / state_tokens) if state_tokens else None,
    }
    return report, prompts


async def _throughput(
    model: ChatModel,
    config: ModelConfig,
    options: BenchOptions,
    prompt: list[int],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """One stream: llama-cpp-python alone against the bot's path, same prompt and sampler."""
    engine = local_engine(model)
    processor = no_stop(sorted(engine.stop_ids))
    sampling = engine.sampling
    raw_llama = await engine.on_worker(load_llama, config)
    raw_sampling = {
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "min_p": 0.0,
        "temp": sampling.temperature,
        "repeat_penalty": sampling.repeat_penalty,
    }
    raw_gaps: list[float] = []
    pipeline_gaps: list[float] = []
    raw_runs: list[float] = []
    pipeline_runs: list[float] = []
    try:
        # One unmeasured run of each first: the first tokens of a fresh context touch its
        # buffers' pages for the first time.
        await engine.on_worker(_raw_arrivals, raw_llama, prompt, 8, processor, raw_sampling)
        await _timed(model, prompt, "warm-up", 8, processor)
        for attempt in range(options.rounds):
            times = await engine.on_worker(
                _raw_arrivals, raw_llama, prompt, options.gen_tokens, processor, raw_sampling
            )
            raw_gaps += _gaps(times)
            raw_runs.append(_rate(_gaps(times)))
            _, arrivals, result = await _timed(
                model, prompt, f"t{attempt}", options.gen_tokens, processor
            )
            pipeline_gaps += _gaps(arrivals)
            pipeline_runs.append(_rate(_gaps(arrivals)))
            progress(
                f"throughput run {attempt + 1}/{options.rounds}: llama-cpp-python "
                f"{raw_runs[-1]:.2f} tok/s, pipeline {pipeline_runs[-1]:.2f} tok/s "
                f"({result.n_tokens} tokens, {len(arrivals)} deltas)"
            )
        shape = model_shape(raw_llama, options.model_path)
    finally:
        await engine.on_worker(raw_llama.close)
    raw, pipeline = _rate(raw_gaps), _rate(pipeline_gaps)
    return {
        "raw_tokens_per_s": round(raw, 2),
        "pipeline_tokens_per_s": round(pipeline, 2),
        "throughput_ratio": round(pipeline / raw, 4),
        "model": shape,
        "tokens_per_s_runs": {"raw": rounded(raw_runs), "pipeline": rounded(pipeline_runs)},
    }


def rounded(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]
