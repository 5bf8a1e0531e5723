"""`python -m bot` as a real process: graceful SIGTERM mid-reply, and clear refusals to start."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from fake_telegram import FakeTelegram
from shown import shown
from tiny_model import TinyModelShape, build_tiny_gguf
from webhook_bots import BOT_ENV

from bot.telegram.texts import RU
from storage.database import create_engine, create_session_factory
from storage.records import MessageRecord
from storage.repositories import ConversationRepository, MessageRepository

OWNER = 1001
WELL_FORMED_TOKEN = "999:" + "A" * 35
# About 150 tokens a second here: a 1500-token reply takes ~10 s, so it is surely still being
# written when the test interrupts it.
SLOW_SHAPE = TinyModelShape(n_embd=512, n_head=8, n_layer=12, n_ff=2048)


@pytest.fixture(scope="module")
def slow_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("slow") / "slow.gguf", shape=SLOW_SHAPE)


def bot_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in BOT_ENV}
    # These tests watch the drafts path; rich replies have their own (tests/test_bot_rich.py).
    env["USE_RICH_MESSAGES"] = "false"
    env.update(values)
    return env


async def stored_history(data_dir: Path) -> list[MessageRecord]:
    db = create_engine(f"sqlite+aiosqlite:///{data_dir / 'domovoy.db'}")
    try:
        async with create_session_factory(db)() as session:
            conversation = await ConversationRepository(session).current(OWNER, OWNER)
            return await MessageRepository(session).history(conversation.id)
    finally:
        await db.dispose()


async def start_bot(env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        env=env,
        cwd=cwd,  # paths come from the settings, never from the working directory
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_sigterm_mid_reply_exits_cleanly_with_the_partial_reply_stored(
    slow_gguf: Path, tmp_path: Path
) -> None:
    async with FakeTelegram() as tg:
        env = bot_env(
            BOT_TOKEN=tg.token,
            TELEGRAM_API_URL=tg.base_url,
            MODEL_PATH=str(slow_gguf),
            DATA_DIR=str(tmp_path / "data"),
            ALLOWED_USERS=str(OWNER),
            MAX_NEW_TOKENS="1500",
            N_THREADS="1",
            STREAM_EDIT_INTERVAL="0.3",
        )
        process = await start_bot(env, tmp_path)
        try:
            await tg.wait_for(lambda: tg.calls("getUpdates"), timeout=60)
            tg.push_message(OWNER, "Расскажи длинную сказку")
            await tg.wait_for(lambda: len(tg.drafts(OWNER)) >= 2, timeout=30)
            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=10)
            elapsed = time.monotonic() - started
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, stderr.decode()
        assert elapsed < 6
        assert b"Traceback" not in stderr
        # What was written reached the user, marked as stopped.
        final = tg.texts(OWNER)
        assert len(final) == 1 and final[0].endswith(RU.reply_interrupted)

    history = await stored_history(tmp_path / "data")
    assert [(r.role, r.status) for r in history] == [("user", "complete"), ("bot", "partial")]
    assert history[0].text == "Расскажи длинную сказку"
    # Exactly what was stored, as the chat shows it (the model's Markdown rendered).
    assert history[1].text.strip() and final[0] == shown(history[1].text, [RU.reply_interrupted])
    assert history[1].n_tokens is not None and 0 < history[1].n_tokens < 1500


async def test_kill_9_mid_reply_keeps_the_message_and_the_reply_so_far(
    slow_gguf: Path, tmp_path: Path
) -> None:
    async with FakeTelegram() as tg:
        env = bot_env(
            BOT_TOKEN=tg.token,
            TELEGRAM_API_URL=tg.base_url,
            MODEL_PATH=str(slow_gguf),
            DATA_DIR=str(tmp_path / "data"),
            ALLOWED_USERS=str(OWNER),
            MAX_NEW_TOKENS="1500",
            N_THREADS="1",
        )
        process = await start_bot(env, tmp_path)
        try:
            await tg.wait_for(lambda: tg.calls("getUpdates"), timeout=60)
            tg.push_message(OWNER, "Расскажи длинную сказку, не потеряй это сообщение")
            await tg.wait_for(lambda: tg.drafts(OWNER), timeout=30)
            for _ in range(200):  # until the reply's first checkpoint is in the database
                history = await stored_history(tmp_path / "data")
                if len(history) == 2 and history[1].text:
                    break
                await asyncio.sleep(0.1)
            assert history[1].status == "pending", "the reply ended before a checkpoint"
        finally:
            process.kill()
            await process.wait()
    history = await stored_history(tmp_path / "data")
    assert [(r.role, r.status) for r in history] == [("user", "complete"), ("bot", "pending")]
    assert history[0].text == "Расскажи длинную сказку, не потеряй это сообщение"
    assert len(history[1].text) > 20  # what was written before the kill

    # The next start keeps the interrupted reply as `partial`, text and all.
    async with FakeTelegram() as tg:
        env.update(BOT_TOKEN=tg.token, TELEGRAM_API_URL=tg.base_url)
        process = await start_bot(env, tmp_path)
        try:
            await tg.wait_for(lambda: tg.calls("getUpdates"), timeout=60)
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), timeout=10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    restarted = await stored_history(tmp_path / "data")
    assert [(r.role, r.status) for r in restarted] == [("user", "complete"), ("bot", "partial")]
    assert restarted[1].text == history[1].text


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"MODEL_PATH": "{model}"}, "BOT_TOKEN is not set"),
        ({"BOT_TOKEN": WELL_FORMED_TOKEN}, "MODEL_PATH is not set"),
        ({"BOT_TOKEN": WELL_FORMED_TOKEN, "MODEL_PATH": "{missing}"}, "does not exist"),
        ({"BOT_TOKEN": "1:abc", "MODEL_PATH": "{model}"}, "BOT_TOKEN is not a bot token"),
        ({"BOT_TOKEN": WELL_FORMED_TOKEN + "x", "MODEL_PATH": "{model}"}, "not a bot token"),
        ({"BOT_TOKEN": "bot" + WELL_FORMED_TOKEN, "MODEL_PATH": "{model}"}, "not a bot token"),
    ],
)
async def test_missing_token_or_model_ends_with_one_sentence_and_exit_2(
    settings: dict[str, str], expected: str, tiny_gguf: Path, tmp_path: Path
) -> None:
    values = {
        k: v.format(model=tiny_gguf, missing=tmp_path / "nope.gguf") for k, v in settings.items()
    }
    env = bot_env(DATA_DIR=str(tmp_path / "data"), **values)
    process = await start_bot(env, tmp_path)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    lines = stderr.decode().strip().splitlines()
    assert process.returncode == 2
    assert len(lines) == 1 and expected in lines[0], lines
    assert lines[0].endswith(".") and not stdout
    # Refused before anything heavy: no database was created, no model was loaded.
    assert not (tmp_path / "data").exists()


async def test_domovoy_run_is_the_same_entry_point(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from bot.cli import main; main()",
        "run",
        env=bot_env(DATA_DIR=str(tmp_path)),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert stderr.decode().strip() == (
        "domovoy: BOT_TOKEN is not set: put the token from @BotFather into BOT_TOKEN."
    )


async def test_a_token_telegram_rejects_ends_with_one_sentence(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    async with FakeTelegram() as tg:
        env = bot_env(
            BOT_TOKEN=WELL_FORMED_TOKEN,  # well-formed, but not the fake server's
            TELEGRAM_API_URL=tg.base_url,
            MODEL_PATH=str(tiny_gguf),
            DATA_DIR=str(tmp_path),
            ADMIN_USERS="1",
        )
        process = await start_bot(env, tmp_path)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert stderr.decode().strip().splitlines()[-1] == (
        "domovoy: Telegram rejected BOT_TOKEN: copy the token from @BotFather again."
    )
    assert b"Traceback" not in stderr


async def test_sigterm_keeps_waiting_messages_and_a_real_restart_answers_them(
    slow_gguf: Path, tmp_path: Path
) -> None:
    questions = ["Первый вопрос", "Второй вопрос", "Третий вопрос"]
    async with FakeTelegram() as tg:
        env = bot_env(
            BOT_TOKEN=tg.token,
            TELEGRAM_API_URL=tg.base_url,
            MODEL_PATH=str(slow_gguf),
            DATA_DIR=str(tmp_path / "data"),
            ALLOWED_USERS=str(OWNER),
            MAX_NEW_TOKENS="200",
            N_THREADS="1",
            PARALLEL="1",
            STREAM_EDIT_INTERVAL="0.3",
        )
        process = await start_bot(env, tmp_path)
        try:
            await tg.wait_for(lambda: tg.calls("getUpdates"), timeout=60)
            for question in questions:
                tg.push_message(OWNER, question)
            await tg.wait_for(lambda: tg.drafts(OWNER), timeout=30)
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, stderr.decode()
        told = tg.texts(OWNER)
        assert told.count(RU.answer_after_restart) == 1  # one notice, however many wait
        assert not any(RU.reply_stopped in text for text in told)
        waiting = [r for r in await stored_history(tmp_path / "data") if r.status == "pending"]
        assert [r.text for r in waiting] == questions[len(told) - 1 :]

        process = await start_bot(env, tmp_path)
        try:

            async def all_answered() -> bool:
                history = await stored_history(tmp_path / "data")
                replies = [r for r in history if r.role == "bot" and r.telegram_message_ids]
                return len(replies) == len(questions)

            deadline = time.monotonic() + 120
            while not await all_answered():
                assert time.monotonic() < deadline, "the waiting messages were not answered"
                await asyncio.sleep(0.2)
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.communicate(), timeout=20)
    history = await stored_history(tmp_path / "data")
    assert [r.text for r in history if r.role == "user"] == questions  # stored once, in order
    assert all(r.status == "complete" for r in history if r.role == "user")
    delivered = [r for r in history if r.role == "bot" and r.telegram_message_ids]
    assert len(delivered) == len(questions)
