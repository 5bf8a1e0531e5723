"""deploy/: the systemd unit passes systemd's own checks, the scripts pass shellcheck, and
install.sh does what it says in --dry-run and (as root) for real, twice.

The tools come from Debian (`apt-get install systemd shellcheck`). Locally a missing tool
skips its test; with CI=true it fails, so CI cannot pass by not running them.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "domovoy.service"
GPU_DROP_IN = DEPLOY / "gpu-offload.conf"
INSTALL = DEPLOY / "install.sh"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (apt-get install -y systemd shellcheck)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (keys may repeat, e.g. SystemCallFilter)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _seconds(value: str) -> float:
    units = {"s": 1, "min": 60, "ms": 0.001}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|min|ms)?", value)
    assert match, value
    return float(match.group(1)) * units[match.group(2) or "s"]


# --- the unit ----------------------------------------------------------------------------


def _verify(tmp_path: Path, unit_text: str, drop_in: str | None = None) -> str:
    """`systemd-analyze verify` in a throw-away root holding the unit, its ExecStart binary
    and the distribution's units (the targets it names), so nothing on the host is touched."""
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
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / "domovoy.service").write_text(unit_text)
    if drop_in is not None:
        (unit_dir / "domovoy.service.d").mkdir()
        (unit_dir / "domovoy.service.d" / "gpu-offload.conf").write_text(drop_in)
    result = subprocess.run(
        [tool, "verify", f"--root={root}", "--man=no", "domovoy.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # verify only warns (exit 0) about unknown keys and bad values: any output is a finding.
    return (result.stdout + result.stderr).strip()


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert _verify(tmp_path, UNIT.read_text()) == ""


def test_unit_with_gpu_drop_in_passes_verify(tmp_path: Path) -> None:
    assert _verify(tmp_path, UNIT.read_text(), GPU_DROP_IN.read_text()) == ""


def test_verify_check_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("RestartSec=15s", "RestartSec=soon\nRestartEvery=1s")
    findings = _verify(tmp_path, broken)
    assert "Failed to parse sec value" in findings and "RestartEvery" in findings


def _exposure(unit: Path) -> float:
    tool = require("systemd-analyze")
    result = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_unit_security_exposure_is_ok(tmp_path: Path) -> None:
    tool = require("systemd-analyze")
    # systemd's own gate: --threshold is on the 0-100 scale, so 25 means 2.5.
    gate = subprocess.run(
        [tool, "security", "--offline=true", "--threshold=25", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gate.returncode == 0, gate.stdout[-2000:]
    assert _exposure(UNIT) <= 2.5
    # The score really depends on the hardening: without it the same unit is "UNSAFE".
    bare = tmp_path / "domovoy.service"
    bare.write_text(
        "\n".join(
            line
            for line in UNIT.read_text().splitlines()
            if not line.startswith(
                (
                    "Protect",
                    "Private",
                    "Restrict",
                    "SystemCall",
                    "Capability",
                    "NoNewPrivileges",
                    "MemoryDeny",
                    "LockPersonality",
                    "ProcSubset",
                )
            )
        )
    )
    assert _exposure(bare) > 5


def test_gpu_drop_in_relaxes_only_the_devices_and_stays_ok(tmp_path: Path) -> None:
    tool = require("systemd-analyze")

    def exposure(drop_in: str | None) -> tuple[float, str]:
        units = tmp_path / ("gpu" if drop_in else "cpu") / "etc/systemd/system"
        (units / "domovoy.service.d").mkdir(parents=True)
        shutil.copy(UNIT, units / "domovoy.service")
        if drop_in is not None:
            (units / "domovoy.service.d" / "gpu-offload.conf").write_text(drop_in)
        root = units.parents[2]
        result = subprocess.run(
            [tool, "security", "--offline=true", f"--root={root}", "--no-pager", "domovoy.service"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        text = result.stdout + result.stderr
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", text)
        assert match, text
        return float(match.group(1)), text

    def failed(report: str) -> set[str]:
        return {line.split()[1] for line in report.splitlines() if line.startswith("✗")}

    cpu, cpu_report = exposure(None)
    gpu, gpu_report = exposure(GPU_DROP_IN.read_text())
    assert gpu <= 2.5
    # Exactly these protections are given up, nothing else.
    assert failed(gpu_report) - failed(cpu_report) == {
        "PrivateDevices=",
        "SupplementaryGroups=",
        "ProcSubset=",
    }
    assert gpu > cpu


def test_unit_runs_the_bot_as_a_service_should() -> None:
    settings = unit_settings(UNIT.read_text())
    assert settings["User"] == ["domovoy"]
    assert settings["StateDirectory"] == ["domovoy"]
    assert settings["EnvironmentFile"] == ["/etc/domovoy/domovoy.env"]
    assert settings["ExecStart"] == ["/opt/domovoy/venv/bin/python -m bot"]
    assert settings["Restart"] == ["on-failure"]
    assert _seconds(settings["RestartSec"][0]) >= 5
    assert "StartLimitBurst" in settings and "StartLimitIntervalSec" in settings
    # A configuration error is not retried: it is the bot's own exit status for one.
    from bot.__main__ import EXIT_CONFIG

    assert settings["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]
    # The bot's graceful shutdown takes a few seconds; leave room beyond that.
    assert _seconds(settings["TimeoutStopSec"][0]) >= 30
    assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "@system-service" in settings["SystemCallFilter"]


def test_llama_cpp_runs_under_memory_deny_write_execute(tiny_gguf: Path) -> None:
    """The unit sets MemoryDenyWriteExecute=yes. systemd-run is not available in a container,
    so apply the kernel's equivalent (prctl PR_SET_MDWE, Linux >= 6.3) to a fresh Python and
    load and run the tiny model through llama-cpp-python there, ctypes callbacks included."""
    script = textwrap.dedent(
        f"""
        import ctypes, sys
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
            sys.exit(77)
        libc.mmap.restype = ctypes.c_void_p
        rwx = libc.mmap(None, 4096, 7, 0x22, -1, 0)
        assert rwx in (None, ctypes.c_void_p(-1).value), "W+X mapping was not refused"
        import llama_cpp
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
        assert callback(41) == 42
        llm = llama_cpp.Llama({str(tiny_gguf)!r}, n_ctx=128, verbose=False, seed=1)
        out = llm.create_completion("Привет", max_tokens=4, temperature=0)
        print("ok", len(out["choices"][0]["text"]) >= 0)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (needs Linux 6.3 or newer)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok True"


# --- the README's backup and restore, on a live WAL database ------------------------------


def _readme_line(prefix: str, state: Path, backups: Path) -> str:
    line = next(
        line for line in (DEPLOY / "README.md").read_text().splitlines() if line.startswith(prefix)
    )
    return line.replace("/var/lib/domovoy", str(state)).replace("'/root/", f"'{backups}/")


def _writer_holding_a_transaction(url: str) -> subprocess.Popen[str]:
    """tests/storage_child.py: stores a user message and a pending reply, commits, then sits
    in an uncommitted write, as the bot does during a long generation."""
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "support" / "storage_child.py"), url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    assert child.stdout.readline().startswith("STORED")
    return child


def _texts(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT text FROM messages ORDER BY id")]


def test_readme_backup_works_while_the_bot_writes_and_restore_drops_the_old_log(
    tmp_path: Path,
) -> None:
    require("sqlite3")
    from storage_child import PARTIAL_REPLY, USER_TEXT

    from storage.column_types import escape_text

    state, backups = tmp_path / "state", tmp_path / "root"
    backups.mkdir()
    db = state / "domovoy.db"
    url = f"sqlite+aiosqlite:///{db}"
    backup_cmd = _readme_line("sqlite3 ", state, backups)
    remove_log_cmd = _readme_line("rm -f ", state, backups)

    writer = _writer_holding_a_transaction(url)
    try:
        subprocess.run(["sh", "-c", backup_cmd], check=True, timeout=60)
    finally:
        writer.kill()
        writer.wait()
    (backup,) = backups.iterdir()
    # Consistent and complete up to the last commit; the open transaction is not in it.
    assert _texts(backup) == [escape_text(USER_TEXT), PARTIAL_REPLY]  # as stored, see ExactText

    # After the backup the bot went on (another turn) and was killed: its log stays behind.
    second = _writer_holding_a_transaction(url)
    second.kill()
    second.wait()
    assert (state / "domovoy.db-wal").stat().st_size > 0
    restored = tmp_path / "restored-without-rm"
    shutil.copytree(state, restored)
    shutil.copy(backup, restored / "domovoy.db")
    assert len(_texts(restored / "domovoy.db")) == 4  # the stale log undid the restore

    subprocess.run(["sh", "-c", remove_log_cmd], check=True, timeout=60)
    shutil.copy(backup, db)
    assert _texts(db) == _texts(backup)


# --- scripts -----------------------------------------------------------------------------


def test_shellcheck_passes_on_deploy_scripts() -> None:
    tool = require("shellcheck")
    scripts = sorted(str(p) for p in DEPLOY.glob("*.sh"))
    assert str(INSTALL) in scripts
    result = subprocess.run([tool, *scripts], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def _source_tree(tmp_path: Path) -> Path:
    """The repository, or a copy with a temporary .env.example if the lead's is not there yet."""
    if (ROOT / ".env.example").is_file():
        return ROOT
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(DEPLOY, src / "deploy")
    shutil.copy(ROOT / "pyproject.toml", src / "pyproject.toml")
    (src / ".env.example").write_text("BOT_TOKEN=\nMODEL_PATH=\n")
    return src


def _install_env(tmp_path: Path, src: Path, user: str, **extra: str) -> dict[str, str]:
    prefix = tmp_path / "p"
    env = dict(
        os.environ,
        DOMOVOY_SRC=str(src),
        DOMOVOY_PREFIX=str(prefix / "opt/domovoy"),
        DOMOVOY_ETC=str(prefix / "etc/domovoy"),
        DOMOVOY_STATE=str(prefix / "var/lib/domovoy"),
        DOMOVOY_UNIT_DIR=str(prefix / "etc/systemd/system"),
        DOMOVOY_USER=user,
    )
    env.pop("CMAKE_ARGS", None)
    env.update(extra)
    return env


def _run_install(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(INSTALL), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_install_dry_run_prints_every_action_and_changes_nothing(tmp_path: Path) -> None:
    src = _source_tree(tmp_path)
    env = _install_env(tmp_path, src, user="domovoy-no-such-user")
    result = _run_install(env, "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    prefix = tmp_path / "p"
    expected = [
        "would run: useradd --system --user-group",
        f"would run: install -d -m 0755 {prefix}/opt/domovoy",
        f"would run: install -d -m 0700 {prefix}/etc/domovoy",
        f"would run: python3 -m venv {prefix}/opt/domovoy/venv",
        "-DGGML_NATIVE=OFF",  # CMAKE_ARGS from deploy/cmake-args.sh
        f"-m pip install --upgrade {src}",
        f"would run: install -m 0600 -o root -g root {src}/.env.example "
        f"{prefix}/etc/domovoy/domovoy.env",
        f"{prefix}/etc/systemd/system/domovoy.service",
        "would run: systemctl daemon-reload",
        "would run: systemctl enable domovoy.service",
    ]
    for text in expected:
        assert text in out, text
    assert "-DGGML_AMX_TILE=OFF" in out
    assert not prefix.exists()  # nothing was created

    # A CUDA build passes its own CMAKE_ARGS through; an existing env file is kept.
    (prefix / "etc/domovoy").mkdir(parents=True)
    (prefix / "etc/domovoy/domovoy.env").write_text("BOT_TOKEN=keep-me\n")
    cuda = _run_install({**env, "CMAKE_ARGS": "-DGGML_CUDA=on"}, "--dry-run")
    assert cuda.returncode == 0, cuda.stderr
    # The CPU flags stay (without them a CUDA build is -march=native, AMX crash included), and
    # the GPU flag comes last, where cmake lets it override.
    build = next(line for line in cuda.stdout.splitlines() if "CMAKE_ARGS=" in line)
    assert "-DGGML_NATIVE=OFF" in build and "-DGGML_AMX_TILE=OFF" in build
    assert build.index("-DGGML_CUDA=on'") > build.index("-DGGML_NATIVE=OFF")
    assert f"keeping existing {prefix}/etc/domovoy/domovoy.env" in cuda.stdout
    assert ".env.example" not in cuda.stdout


def test_install_dry_run_prints_commands_that_can_be_pasted(tmp_path: Path) -> None:
    env = _install_env(tmp_path, ROOT, "domovoy-no-such-user")
    env["DOMOVOY_PREFIX"] = str(tmp_path / "with space's")
    result = _run_install(env, "--dry-run")
    assert result.returncode == 0, result.stderr
    commands = [
        line.removeprefix("would run: ")
        for line in result.stdout.splitlines()
        if line.startswith("would run: ") and "with space" in line
    ]
    assert any("CMAKE_ARGS=" in line for line in commands)
    for line in commands:  # the shell splits each line back into the very same arguments
        words = shlex.split(line)
        assert any(word.startswith(str(tmp_path / "with space's")) for word in words), line
    build = shlex.split(next(line for line in commands if "CMAKE_ARGS=" in line))
    assert build[1].startswith("CMAKE_ARGS=-DGGML_NATIVE=OFF ")


def test_install_refuses_a_python_older_than_3_11_before_changing_anything(
    tmp_path: Path,
) -> None:
    old_python = tmp_path / "python3.10"
    old_python.write_text("#!/bin/sh\nexec python3 -c 'import sys; sys.exit(1)'\n")
    old_python.chmod(0o755)
    user = pwd.getpwuid(os.getuid()).pw_name  # an existing account: never a useradd here
    env = _install_env(tmp_path, ROOT, user, PYTHON=str(old_python))
    dry = _run_install(env, "--dry-run")
    assert dry.returncode == 0 and "older than 3.11" in dry.stderr
    if os.geteuid() != 0:
        return  # the real run refuses non-root users before it looks at Python
    stub = tmp_path / "systemctl"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    real = _run_install({**env, "SYSTEMCTL": str(stub)})
    assert real.returncode == 1
    assert "older than 3.11" in real.stderr and "PYTHON=python3.11" in real.stderr
    assert not (tmp_path / "p").exists()  # nothing created, no user added


def test_install_refuses_unknown_options_and_missing_template(tmp_path: Path) -> None:
    bad = _run_install(_install_env(tmp_path, ROOT, "x"), "--frobnicate")
    assert bad.returncode == 2 and "unknown option --frobnicate" in bad.stderr
    src = tmp_path / "bare"
    shutil.copytree(DEPLOY, src / "deploy")
    shutil.copy(ROOT / "pyproject.toml", src / "pyproject.toml")
    missing = _run_install(_install_env(tmp_path, src, "x"), "--dry-run")
    assert missing.returncode == 1
    assert ".env.example is missing" in missing.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="a real install writes root-owned files")
def test_install_for_real_is_idempotent(tmp_path: Path) -> None:
    src = _source_tree(tmp_path)
    log = tmp_path / "systemctl.log"
    stub = tmp_path / "systemctl"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    stub.chmod(0o755)
    user = pwd.getpwuid(os.getuid()).pw_name  # an existing account: no useradd on the host
    env = _install_env(tmp_path, src, user, SYSTEMCTL=str(stub))
    prefix = tmp_path / "p"

    first = _run_install(env, "--no-venv")
    assert first.returncode == 0, first.stderr
    env_file = prefix / "etc/domovoy/domovoy.env"
    assert env_file.read_text() == (src / ".env.example").read_text()
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert (prefix / "etc/domovoy").stat().st_mode & 0o777 == 0o700
    assert (prefix / "var/lib/domovoy/models").is_dir()
    unit = unit_settings((prefix / "etc/systemd/system/domovoy.service").read_text())
    assert unit["EnvironmentFile"] == [str(env_file)]
    assert unit["ExecStart"] == [f"{prefix}/opt/domovoy/venv/bin/python -m bot"]
    assert unit["User"] == [user]
    assert log.read_text().splitlines() == [
        "daemon-reload",
        "enable domovoy.service",
        "try-restart domovoy.service",
    ]

    # The owner fills in the token; a second run (an update) keeps it and the unit as is.
    env_file.write_text("BOT_TOKEN=123:secret\n")
    log.unlink()
    second = _run_install(env, "--no-venv")
    assert second.returncode == 0, second.stderr
    assert env_file.read_text() == "BOT_TOKEN=123:secret\n"
    assert "is up to date" in second.stdout
    assert log.read_text().splitlines() == ["enable domovoy.service", "try-restart domovoy.service"]
