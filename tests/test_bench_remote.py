"""`domovoy bench --engine-url`: the bench's figures for ENGINE=remote, measured on a real
llama-server (their values are measured on the bench model; here that they are there, named
as the local ones, and consistent with what the server itself reports)."""

from __future__ import annotations

import json
from pathlib import Path

import llama_server
from typer.testing import CliRunner

from bot.cli import app

# The local bench's figures (tests/test_bench_parallel.py), which the remote one must report.
FIGURES = {
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
}


def test_remote_bench_reports_the_local_figures(tiny_gguf: Path) -> None:
    with llama_server.servers(tiny_gguf, parallel=4) as (server,):
        args = ["bench", "--model", str(tiny_gguf), "--engine-url", server.url, "--json"]
        args += ["--history-tokens", "300", "--users", "2", "--rounds", "1", "--n-ctx", "1024"]
        outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout.strip().splitlines()[-1])
    assert set(report) >= FIGURES
    assert report["engine"] == {"kind": "remote", "urls": [server.url]}
    assert report["settings"]["parallel"] == 4
    assert set(report["aggregate_speedup"]) == {"2", "4"}
    assert set(report["llama_server"]["aggregate_speedup"]) == {"2", "4"}
    assert report["busy_streams"] == 3
    assert report["raw_tokens_per_s"] > 0 and report["pipeline_tokens_per_s"] > 0
    # The server's own timings: a follow-up on its slot evaluates the new turn (plus the last
    # sampled token of the previous reply when it ended at the length limit, which llama.cpp
    # never evaluated); the same prompt as a new conversation evaluates everything.
    new_turn = report["new_turn_tokens"]
    evaluated = report["follow_up_evaluated_tokens"]
    assert all(n is not None and 0 < n < 100 for n in new_turn)
    assert all(0 <= e - n <= 1 for e, n in zip(evaluated["cached"], new_turn, strict=True))
    assert evaluated["cold"] == report["follow_up_prompt_tokens"]
