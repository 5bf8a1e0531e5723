""".ci/postgres.sh: each CI run stops exactly the PostgreSQL server it started."""

from __future__ import annotations

import glob
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "postgres.sh"


def script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )


def running(folder: str) -> bool:
    pid_file = Path(folder) / "data" / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = pid_file.read_text().split()[0]
    return Path(f"/proc/{pid}").exists()


@pytest.mark.skipif(
    not glob.glob("/usr/lib/postgresql/*/bin/initdb"), reason="PostgreSQL is not installed"
)
def test_stopping_one_server_leaves_another_runs_server_alone() -> None:
    first, second = script("start").stdout.split(), script("start").stdout.split()
    try:
        assert len(first) == 2 and len(second) == 2, (first, second)
        assert first[0].startswith("postgresql+asyncpg://") and first[0] != second[0]
        assert running(first[1]) and running(second[1])
        assert script("stop", first[1]).returncode == 0
        assert not Path(first[1]).exists()
        assert running(second[1])
    finally:
        for started in (first, second):
            if len(started) == 2 and Path(started[1]).exists():
                script("stop", started[1])
    assert script("stop", "/etc").returncode == 1  # only folders this script made
