"""Real llama.cpp servers for the ENGINE=remote tests: the binary deploy/llama-server.sh
builds (cached outside the checkout), started on free ports with the flags Domovoy needs."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@cache
def binary() -> Path:
    out = subprocess.run(
        ["sh", str(ROOT / "deploy" / "llama-server.sh"), sys.executable],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LlamaServer:
    process: subprocess.Popen[bytes]
    port: int
    api_key: str | None = None
    log: Path | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
        return json.loads(body)

    def slots(self) -> list[dict[str, Any]]:
        slots: list[dict[str, Any]] = self.get("/slots")
        return slots

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


def start(
    model: Path,
    *,
    parallel: int = 2,
    n_ctx_per_slot: int = 1024,
    api_key: str | None = None,
    log: Path | None = None,
    port: int | None = None,
) -> LlamaServer:
    port = port or free_port()
    args = [str(binary()), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--parallel", str(parallel), "-c", str(parallel * n_ctx_per_slot)]
    args += ["--cache-ram", "0", "-t", "1", "-tb", "1", "--no-webui", "-fa", "off"]
    if api_key:
        args += ["--api-key", api_key]
    output = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT)
    server = LlamaServer(process, port, api_key, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {process.returncode}")
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return server
            if time.monotonic() > deadline:
                raise RuntimeError("llama-server did not come up within 2 minutes")
            time.sleep(0.1)
    except BaseException:
        stop(server)
        raise


def stop(server: LlamaServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


@contextlib.contextmanager
def servers(model: Path, count: int = 1, **options: Any) -> Iterator[list[LlamaServer]]:
    started: list[LlamaServer] = []
    try:
        for _ in range(count):
            started.append(start(model, **options))
        yield started
    finally:
        for server in started:
            stop(server)
