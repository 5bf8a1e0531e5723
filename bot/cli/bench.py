"""`domovoy bench`: time to first token with and without kept states, and streaming cost."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from models.runtime.bench import BenchOptions


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
    engine_url: Annotated[
        list[str] | None,
        typer.Option(
            help="A running llama-server (repeat for several): measure ENGINE=remote on it "
            "instead of the local engine; ENGINE_API_KEY is sent if set."
        ),
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

    api_key = settings.engine.engine_api_key
    try:
        if engine_url:
            from models.remote.bench import run_remote_bench

            urls = [url.rstrip("/") for url in engine_url]
            key = api_key.get_secret_value() if api_key else None
            report = asyncio.run(run_remote_bench(options, urls, progress, key))
        else:
            report = asyncio.run(run_bench(options, progress))
            if llama_server is not None:
                report["remote_engine"] = asyncio.run(_remote_beside(options, progress))
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
        f"model: {shape['n_params'] / 1e6:.1f}M parameters, {shape['architecture']}, "
        f"n_vocab={shape['n_vocab']}, n_ctx={report['settings']['n_ctx']}"
    )


async def _remote_beside(options: BenchOptions, progress: Callable[[str], None]) -> dict[str, Any]:
    """The same bench through ENGINE=remote, on a llama-server started here with the local
    run's model, slots, context per slot and threads: the two engines side by side."""
    from models.remote.bench import run_remote_bench
    from models.runtime.bench_server import llama_server

    assert options.llama_server is not None
    progress("ENGINE=remote: starting llama-server with the same model and slots")
    with llama_server(
        options.llama_server,
        options.model_path,
        parallel=options.parallel,
        n_ctx=options.n_ctx,
        threads=options.n_threads or 1,
        n_batch=options.n_batch,
    ) as port:
        return await run_remote_bench(options, [f"http://127.0.0.1:{port}"], progress)
