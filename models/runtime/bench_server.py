"""`domovoy bench --llama-server PATH`: the several-at-once workload on llama.cpp's own server.

The server runs the same model with as many slots as the bot has sequences, the same context
per slot, threads and batch size; the same prompts (as token ids) stream the same number of
tokens with the same sampling settings, 1, 2 and 4 at once. Token times are taken where the
client receives them and summarized the same way as the bot's (median gap per stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from models.runtime.bench_parallel import Runner
from models.runtime.sampler import SamplingParams


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def llama_server(
    binary: Path, model: Path, *, parallel: int, n_ctx: int, threads: int, n_batch: int
) -> Iterator[int]:
    """Start the server, wait until it answers /health, yield its port, stop it."""
    port = _free_port()
    args = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    args += ["-np", str(parallel), "-c", str(parallel * n_ctx), "-t", str(threads)]
    args += ["-b", str(n_batch), "-ub", str(n_batch), "--no-webui", "-fa", "off"]
    # As ENGINE=remote needs it (deploy/README.md): no prompt cache shared across slots.
    args += ["--cache-ram", "0"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {process.returncode}")
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("llama-server did not come up within 5 minutes")
            time.sleep(0.5)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stream_times(
    url: str,
    prompt: Sequence[int],
    n_tokens: int,
    sampling: SamplingParams,
    api_key: str | None = None,
) -> list[float]:
    """Arrival times of the streamed tokens of one /completion request to llama-server at
    `url` (http://host:port)."""
    body = {
        "prompt": list(prompt),
        "n_predict": n_tokens,
        "stream": True,
        "ignore_eos": True,
        "cache_prompt": False,
        "temperature": sampling.temperature,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "min_p": 0.0,
        "repeat_penalty": sampling.repeat_penalty,
        "repeat_last_n": 64,
        "seed": 1,
    }
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.netloc, timeout=600)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    connection.request("POST", f"{address.path.rstrip('/')}/completion", json.dumps(body), headers)
    response = connection.getresponse()
    times: list[float] = []
    for raw in response:
        line = raw.strip()
        if not line.startswith(b"data: "):
            continue
        event: dict[str, Any] = json.loads(line[6:])
        if event.get("stop"):
            break
        times.append(time.perf_counter())
    connection.close()
    return times


def server_runner(url: str, sampling: SamplingParams, api_key: str | None = None) -> Runner:
    """Streams straight to the server, for `bench_parallel.aggregate`."""

    async def run(prompts: list[list[int]], n_tokens: int, tag: str) -> list[list[float]]:
        return await asyncio.gather(
            *(asyncio.to_thread(stream_times, url, p, n_tokens, sampling, api_key) for p in prompts)
        )

    return run
