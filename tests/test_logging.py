from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from fake_telegram import FakeTelegram


def run_logging(env: dict[str, str]) -> str:
    code = (
        "import logging\n"
        "from bot.logs import setup_logging\n"
        "setup_logging('INFO')\n"
        "logging.getLogger('bot.x').info('started')\n"
        "logging.getLogger('bot.x').warning('slow disk')\n"
        "logging.getLogger('bot.x').debug('hidden')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stderr


def test_plain_lines_outside_systemd() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    assert run_logging(env).splitlines() == ["INFO bot.x: started", "WARNING bot.x: slow disk"]


def test_syslog_priorities_under_systemd() -> None:
    env = {"PATH": "/usr/bin:/bin", "JOURNAL_STREAM": "8:12345"}
    assert run_logging(env).splitlines() == [
        "<6>INFO bot.x: started",
        "<4>WARNING bot.x: slow disk",
    ]


# --- message text never reaches the log unless LOG_MESSAGE_TEXT=true ---------------------------

SECRET = "Пароль от сейфа: zebra-7731-quartz"
OWNER = 1001


async def run_bot_at_debug(
    model: Path, tmp_path: Path, *, log_message_text: bool
) -> tuple[str, list[str]]:
    """A real `python -m bot` at LOG_LEVEL=DEBUG answers one private and one group message;
    returns its log and the replies."""
    log_path = tmp_path / "bot.log"
    async with FakeTelegram() as tg:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOG_", "BOT_"))}
        env.update(
            BOT_TOKEN=tg.token,
            TELEGRAM_API_URL=tg.base_url,
            MODEL_PATH=str(model),
            DATA_DIR=str(tmp_path / "data"),
            ALLOWED_USERS=str(OWNER),
            MAX_NEW_TOKENS="24",
            N_THREADS="1",
            LOG_LEVEL="DEBUG",
            LOG_MESSAGE_TEXT=str(log_message_text).lower(),
        )
        env.pop("JOURNAL_STREAM", None)
        with log_path.open("wb") as log:  # a file: a pipe nobody reads would fill and block
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", env=env, cwd=tmp_path, stderr=log
            )
            try:
                await tg.wait_for(lambda: tg.calls("getUpdates"), timeout=60)
                tg.push_message(OWNER, SECRET)
                tg.push_group_message(OWNER, -100555, f"{SECRET} (группа)", mention=True)
                await tg.wait_for(
                    lambda: tg.calls("sendMessage") and tg.texts(OWNER) and tg.texts(-100555),
                    timeout=60,
                )
                await asyncio.sleep(0.5)  # the final edits and the stored reply
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), timeout=30)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        replies = tg.texts(OWNER) + tg.texts(-100555)
    return log_path.read_text(encoding="utf-8", errors="replace"), replies


async def test_debug_logs_hold_no_message_text(tiny_gguf: Path, tmp_path: Path) -> None:
    log, replies = await run_bot_at_debug(tiny_gguf, tmp_path, log_message_text=False)
    assert replies and "Loading the model" in log
    assert "zebra-7731" not in log
    for reply in replies:  # what the bot wrote back is message text too
        for line in reply.splitlines():
            if len(line.strip()) >= 12:
                assert line.strip() not in log


async def test_log_message_text_true_does_log_it(tiny_gguf: Path, tmp_path: Path) -> None:
    """The other side of the test above: the text does reach a DEBUG log when allowed, so
    its absence there means something."""
    log, _ = await run_bot_at_debug(tiny_gguf, tmp_path, log_message_text=True)
    assert "zebra-7731" in log
