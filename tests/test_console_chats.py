"""`domovoy chat` as a real process: /new and /chats switch between stored conversations."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_console import CLI, console_env, stored

from bot.telegram.texts import RU


async def test_console_new_and_chats_switch_back(tiny_gguf: Path, tmp_path: Path) -> None:
    script = "Про котов\n/new\nПро лис\n/chats\n/chats 2\nЕщё про котов\n/chats del 2\n/chats\n"
    process = await asyncio.create_subprocess_exec(
        *CLI,
        env=console_env(tiny_gguf, tmp_path, MAX_NEW_TOKENS="8"),
        cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(script.encode()), timeout=90)
    output = stdout.decode()
    assert process.returncode == 0, stderr.decode()
    assert RU.new_done in output
    assert "1. • Про лис · " in output and "2. Про котов · " in output
    assert RU.chats_switched.format(title="Про котов") in output
    assert RU.chats_deleted in output
    # After deleting the foxes, only the cats are listed, as the open conversation.
    assert output.rstrip().splitlines()[-1].startswith("1. • Про котов · ")
    history, _, _ = await stored(tmp_path)
    assert [r.text for r in history if r.role == "user"] == ["Про котов", "Ещё про котов"]
