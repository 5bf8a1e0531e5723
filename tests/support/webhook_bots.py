"""Bots in webhook mode for end-to-end tests: in-process settings, and N real `python -m bot`
processes behind the fake Bot API server's load balancer on one database.

    async with FakeTelegram(local_bot_api=True) as tg:
        async with webhook_bots(tg, 2, model=gguf, folder=tmp_path, database_url=url) as bots:
            tg.push_message(OWNER, "привет")       # delivered to one of the processes
            ...
            await bots[0].stop()                   # SIGTERM; bots[0].start() starts it again

Each process listens on its own free port (WEBHOOK_PORT) and path /telegram; its log goes to
`<folder>/bot-<n>.log` (read with .log()). All share WEBHOOK_URL and WEBHOOK_SECRET, and the
database: DATABASE_URL, or each its own SQLite file under its data folder when None.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fake_telegram import FakeTelegram

SECRET = "domovoy-webhook-secret_0123456789"
PATH = "/telegram"
# The public address Telegram would post to; the fake's balancer forwards to the processes.
PUBLIC_URL = "http://127.0.0.1:9/telegram"
# Settings of the developer's environment that must not leak into a test's bot process.
BOT_ENV = [
    "BOT_TOKEN",
    "MODEL_PATH",
    "LORA_PATH",
    "DATA_DIR",
    "DATABASE_URL",
    "TELEGRAM_API_URL",
    "ALLOWED_USERS",
    "ADMIN_USERS",
    "MAX_NEW_TOKENS",
    "N_CTX",
    "SYSTEM_PROMPT",
    "TEMPLATE",
    "USE_DRAFTS",
    "USE_RICH_MESSAGES",
    "STATE_DIRECTORY",
    "ENGINE",
    "ENGINE_URLS",
    "WEBHOOK_URL",
    "WEBHOOK_SECRET",
    "WEBHOOK_HOST",
    "WEBHOOK_PORT",
    "WEBHOOK_PATH",
    "WEBHOOK_MAX_CONNECTIONS",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def webhook_overrides(port: int, secret: str = SECRET) -> dict[str, Any]:
    """Settings for the in-process bot (bot_e2e.running_bot) in webhook mode."""
    return {
        "webhook_url": PUBLIC_URL,
        "webhook_secret": secret,
        "webhook_host": "127.0.0.1",
        "webhook_port": port,
        "webhook_path": PATH,
    }


def backend_url(port: int) -> str:
    return f"http://127.0.0.1:{port}{PATH}"


@dataclass
class BotProcess:
    index: int
    port: int
    env: dict[str, str]
    folder: Path
    process: asyncio.subprocess.Process | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return backend_url(self.port)

    @property
    def log_path(self) -> Path:
        return self.folder / f"bot-{self.index}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            env=self.env,
            cwd=self.folder,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )

    async def stop(self, timeout: float = 20.0) -> int:  # noqa: ASYNC109
        """SIGTERM (the graceful shutdown), SIGKILL if it hangs; the exit code."""
        process = self.process
        if process is None:
            return 0
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log is not None:
            self._log.close()
        self.process = None
        assert process.returncode is not None
        return process.returncode


def bot_process_env(
    tg: FakeTelegram,
    *,
    model: Path,
    data_dir: Path,
    port: int,
    database_url: str | None,
    allowed_users: str,
    extra: dict[str, str],
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in BOT_ENV}
    env.update(
        BOT_TOKEN=tg.token,
        TELEGRAM_API_URL=tg.base_url,
        MODEL_PATH=str(model),
        DATA_DIR=str(data_dir),
        ALLOWED_USERS=allowed_users,
        N_THREADS="1",
        MAX_NEW_TOKENS="32",
        STREAM_EDIT_INTERVAL="0.3",
        USE_RICH_MESSAGES="false",
        WEBHOOK_URL=PUBLIC_URL,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_HOST="127.0.0.1",
        WEBHOOK_PORT=str(port),
        WEBHOOK_PATH=PATH,
    )
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def webhook_bots(
    tg: FakeTelegram,
    count: int,
    *,
    model: Path,
    folder: Path,
    database_url: str | None,
    allowed_users: str = "1001",
    extra: dict[str, str] | None = None,
    policy: str = "round_robin",
    ready: Callable[[], bool] | None = None,
) -> AsyncIterator[list[BotProcess]]:
    """Start `count` bot processes in webhook mode and put the fake's balancer in front of
    them; ready once each has set the webhook. SIGTERM to all at the end."""
    bots = []
    for index in range(count):
        data_dir = folder / f"data-{index}"
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = bot_process_env(
            tg,
            model=model,
            data_dir=data_dir,
            port=port,
            database_url=database_url,
            allowed_users=allowed_users,
            extra=extra or {},
        )
        bots.append(BotProcess(index, port, env, folder))
    tg.webhook_backends([bot.url for bot in bots], policy=policy)
    try:
        already = len(set_webhook_calls(tg))
        for bot in bots:
            await bot.start()
        await wait_ready(tg, bots, already + count, ready)
        yield bots
    finally:
        for bot in bots:
            await bot.stop()


def set_webhook_calls(tg: FakeTelegram) -> list[Any]:
    return [c for c in tg.calls("setWebhook") if c.status == 200 and c.response]


async def wait_ready(
    tg: FakeTelegram, bots: list[BotProcess], calls: int, ready: Callable[[], bool] | None
) -> None:
    def started() -> bool:
        for bot in bots:
            if bot.process is not None and bot.process.returncode is not None:
                raise AssertionError(f"bot {bot.index} exited early:\n{bot.log()[-3000:]}")
        return len(set_webhook_calls(tg)) >= calls and (ready is None or ready())

    await tg.wait_for(started, timeout=120)
