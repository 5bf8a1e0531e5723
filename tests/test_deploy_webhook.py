"""deploy/domovoy-webhook@.service: an instance passes systemd's own checks and keeps every
protection of deploy/domovoy.service."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from test_deploy import UNIT, require, unit_settings

TEMPLATE = UNIT.parent / "domovoy-webhook@.service"
# What differs on purpose: the instance's port, its own state folder, the log name.
INSTANCE_ONLY = {"Description", "After", "Environment", "StateDirectory", "SyslogIdentifier"}


def test_the_template_keeps_every_setting_of_the_polling_unit() -> None:
    polling, webhook = unit_settings(UNIT.read_text()), unit_settings(TEMPLATE.read_text())
    for key, values in polling.items():
        if key not in INSTANCE_ONLY:
            assert webhook.get(key) == values, key
    assert "WEBHOOK_PORT=%i" in webhook["Environment"]
    assert webhook["StateDirectory"] == ["domovoy/webhook-%i domovoy"]


def test_an_instance_passes_verify_and_security(tmp_path: Path) -> None:
    tool = require("systemd-analyze")
    root = tmp_path / "root"
    system_units = next(
        p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()
    )
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    python = root / "opt/domovoy/venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copy(TEMPLATE, units / TEMPLATE.name)
    verify = subprocess.run(
        [tool, "verify", f"--root={root}", "--man=no", "domovoy-webhook@8081.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stderr
    security = subprocess.run(
        [
            tool,
            "security",
            "--offline=true",
            f"--root={root}",
            "--no-pager",
            "--threshold=25",
            "domovoy-webhook@8081.service",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout[-2000:]
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert match and float(match.group(1)) <= 2.5, security.stdout[-2000:]
