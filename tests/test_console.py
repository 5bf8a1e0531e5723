"""`domovoy chat` as a real process: the same model, window and storage in the terminal."""

from __future__ import annotations

import asyncio
import codecs
import os
import signal
import sys
from pathlib import Path

from tiny_model import TinyModelShape, build_tiny_gguf

from bot.core.console import LOCAL_USER
from bot.telegram.texts import RU
from storage.database import create_engine, create_session_factory
from storage.records import MessageRecord
from storage.repositories import ConversationRepository, MessageRepository, UserRepository

CLI = [sys.executable, "-c", "from bot.cli import main; main()", "chat"]
SLOW_SHAPE = TinyModelShape(n_embd=384, n_head=6, n_layer=8, n_ff=1536)


def console_env(model: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "SYSTEM_PROMPT"}}
    env.update(MODEL_PATH=str(model), DATA_DIR=str(data_dir), LANG="ru_RU.UTF-8", N_THREADS="1")
    env.update(extra)
    return env


async def stored(data_dir: Path) -> tuple[list[MessageRecord], str | None, int]:
    db = create_engine(f"sqlite+aiosqlite:///{data_dir / 'domovoy.db'}")
    try:
        async with create_session_factory(db)() as session:
            conversation = await ConversationRepository(session).current(LOCAL_USER, LOCAL_USER)
            history = await MessageRepository(session).history(conversation.id)
            user = await UserRepository(session).get(LOCAL_USER)
            await session.rollback()
    finally:
        await db.dispose()
    assert user is not None
    return history, user.system_prompt, conversation.id


async def test_console_chat_streams_and_keeps_history_with_commands(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    script = "Привет\n/system Ты кот\nКто ты?\n/system\n/forget\n/reset\nСнова\n"
    process = await asyncio.create_subprocess_exec(
        *CLI,
        env=console_env(tiny_gguf, tmp_path, MAX_NEW_TOKENS="40"),
        cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(script.encode()), timeout=90)
    output = stdout.decode()
    assert process.returncode == 0, stderr.decode()
    assert RU.system_set in output and "Ты кот" in output and RU.reset_done in output
    assert output.count(RU.console_help) == 2  # at the start and for /forget
    history, system_prompt, conversation_id = await stored(tmp_path)
    assert system_prompt == "Ты кот"
    assert [(r.role, r.status) for r in history] == [("user", "complete"), ("bot", "complete")]
    assert history[0].text == "Снова" and history[1].text.strip()
    assert history[1].text in output  # streamed to the terminal exactly as stored
    assert conversation_id > 1  # /reset opened a new conversation


async def test_ctrl_c_stops_a_reply_without_quitting(tmp_path: Path) -> None:
    slow = build_tiny_gguf(tmp_path / "slow.gguf", shape=SLOW_SHAPE)
    process = await asyncio.create_subprocess_exec(
        *CLI,
        env=console_env(slow, tmp_path / "data", MAX_NEW_TOKENS="1500", N_THREADS="1"),
        cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        output = ""
        decoder = codecs.getincrementaldecoder("utf-8")()

        async def read_until(predicate: str | int) -> None:
            nonlocal output
            while (
                (predicate not in output)
                if isinstance(predicate, str)
                else (len(output) < predicate)
            ):
                chunk = await asyncio.wait_for(process.stdout.read(256), timeout=60)  # type: ignore[union-attr]
                if not chunk:
                    raise AssertionError(f"the console ended early: {output!r}")
                output += decoder.decode(chunk)

        await read_until(RU.console_help)
        process.stdin.write("Расскажи длинную сказку\n".encode())
        await process.stdin.drain()
        await read_until(len(output) + 30)  # the reply is streaming
        process.send_signal(signal.SIGINT)
        await read_until(RU.reply_stopped)
        # The console still answers after the Ctrl-C: it did not quit.
        process.stdin.write(b"/system\n")
        await process.stdin.drain()
        await read_until(RU.system_default.split(":")[0])
        assert process.returncode is None, "Ctrl-C during a reply must not quit"
        process.stdin.write(b"/quit\n")
        await process.stdin.drain()
        process.stdin.close()
        await asyncio.wait_for(process.wait(), timeout=15)
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    history, _, _ = await stored(tmp_path / "data")
    assert [(r.role, r.status) for r in history] == [("user", "complete"), ("bot", "partial")]
    assert history[1].text.strip() and history[1].text in output


async def test_bytes_that_are_not_utf8_are_kept_and_shown_as_replacement_marks(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    """A strict UTF-8 terminal (C.UTF-8, not the C locale's lenient mode) sending bytes that
    are not UTF-8: they are stored as lone surrogates, like the ones Telegram may deliver, and
    every part of the chat takes them."""
    script = "/system Ты \udcff кот\n/system\nПривет \udcfe мир\n".encode(errors="surrogateescape")
    process = await asyncio.create_subprocess_exec(
        *CLI,
        env=console_env(tiny_gguf, tmp_path, MAX_NEW_TOKENS="20", LC_ALL="C.UTF-8"),
        cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(script), timeout=90)
    assert process.returncode == 0, stderr.decode()
    assert "Ты ? кот" in stdout.decode()
    history, system_prompt, _ = await stored(tmp_path)
    assert system_prompt == "Ты \udcff кот"
    assert [(r.role, r.status) for r in history] == [("user", "complete"), ("bot", "complete")]
    assert history[0].text == "Привет \udcfe мир"
