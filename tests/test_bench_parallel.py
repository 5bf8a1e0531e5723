"""`domovoy bench --json` reports the several-conversations figures (their values are
measured on the bench model; here only that they are there and consistent)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bot.cli import app


def test_bench_reports_batching_and_token_exact_follow_ups(tiny_gguf: Path) -> None:
    args = ["bench", "--model", str(tiny_gguf), "--history-tokens", "300", "--json"]
    outcome = CliRunner().invoke(app, [*args, "--users", "2", "--rounds", "1", "--threads", "2"])
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout.strip().splitlines()[-1])
    assert report["settings"]["parallel"] == 4
    assert set(report["aggregate_speedup"]) == {"2", "4"}
    assert set(report["per_user_ratio"]) == {"2", "4"}
    for n in ("2", "4"):
        speedup, per_user = report["aggregate_speedup"][n], report["per_user_ratio"][n]
        assert speedup > 0
        assert abs(per_user - speedup / int(n)) < 0.01
    assert report["busy_ttft_s"] > 0 and report["idle_ttft_s"] > 0
    assert report["busy_streams"] == 3  # the follow-up really arrived beside three streams
    # Token-exact: a cached follow-up evaluates exactly its new turn, nothing of the reply.
    new_turn = report["new_turn_tokens"]
    assert all(n is not None and 0 < n < 100 for n in new_turn)
    assert report["follow_up_evaluated_tokens"]["cached"] == new_turn
