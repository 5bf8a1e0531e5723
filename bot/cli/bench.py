"""`domovoy bench`: time to first token with and without kept states, and streaming cost."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated

import typer


def bench(
    model: Annotated[Path, typer.Option(help="GGUF model file to measure.")],
    history_tokens: Annotated[
        int, typer.Option(min=16, help="Length of each user's stored conversation.")
    ] = 1500,
    users: Annotated[int, typer.Option(min=2, help="Conversations taking turns.")] = 3,
    n_ctx: Annotated[int, typer.Option(min=64, help="Context size.")] = 2048,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Threads; default N_THREADS or every core.")
    ] = None,
    gen_tokens: Annotated[int, typer.Option(min=2, help="Tokens per throughput run.")] = 64,
    rounds: Annotated[int, typer.Option(min=1, help="Throughput runs of each kind.")] = 3,
    parallel: Annotated[
        int, typer.Option(min=1, help="Sequences for the several-conversations figures.")
    ] = 4,
    llama_server: Annotated[
        Path | None,
        typer.Option(help="llama.cpp's llama-server binary: the same workload on it, compared."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure follow-up latency with and without kept states, the streaming overhead, and
    what decoding several conversations together gives."""
    from bot.settings import Settings
    from models.errors import ModelError
    from models.runtime.bench import BenchOptions, run_bench

    settings = Settings()
    if not model.is_file():
        typer.echo(f"The model file {model} does not exist.", err=True)
        raise typer.Exit(2)
    options = BenchOptions(
        model_path=model,
        history_tokens=history_tokens,
        users=users,
        n_ctx=n_ctx,
        n_threads=threads or settings.model.n_threads or os.cpu_count() or 1,
        n_batch=settings.model.n_batch,
        template=settings.model.template,
        gen_tokens=gen_tokens,
        rounds=rounds,
        parallel=parallel,
        llama_server=llama_server,
    )

    def progress(line: str) -> None:
        typer.echo(line, err=True)

    try:
        report = asyncio.run(run_bench(options, progress))
    except (ModelError, ValueError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if json_output:
        typer.echo(json.dumps(report, ensure_ascii=False))
        return
    for name in (
        "ttft_cold_s",
        "ttft_cached_s",
        "ttft_ratio",
        "raw_tokens_per_s",
        "pipeline_tokens_per_s",
        "throughput_ratio",
        "state_bytes_per_token",
        "aggregate_speedup",
        "per_user_ratio",
        "busy_ttft_s",
        "idle_ttft_s",
        "new_turn_tokens",
        "follow_up_evaluated_tokens",
    ):
        typer.echo(f"{name}: {report[name]}")
    shape = report["model"]
    typer.echo(
        f"model: {shape['n_params'] / 1e6:.1f}M parameters, n_embd={shape['n_embd']}, "
        f"n_layer={shape['n_layer']}, n_head={shape['n_head']}, n_ff={shape['n_ff']}, "
        f"n_vocab={shape['n_vocab']}, n_ctx={report['settings']['n_ctx']}"
    )
