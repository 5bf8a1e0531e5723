from __future__ import annotations

import subprocess
import sys


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
