"""Webhook mode end to end: the real bot (in-process, or `python -m bot` processes) behind the
fake Bot API server's webhook delivery, with the tiny real model and a real database."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from bot_e2e import OWNER, Running, instrument, load_model, running_bot
from fake_telegram import FakeTelegram
from fake_telegram_webhook import SECRET_HEADER, Delivery
from webhook_bots import BOT_ENV, SECRET, backend_url, free_port, webhook_bots, webhook_overrides

from bot import preflight
from bot.preflight import StartupError
from bot.settings import Settings
from models.runtime.chat_model import ChatModel
from storage.database import create_engine, create_session_factory, migrate
from storage.repositories import ConversationRepository, MessageRepository

POSTGRES_URL = os.environ.get("DOMOVOY_TEST_POSTGRES_URL")


@pytest.fixture
async def chat_model(tiny_gguf: Path) -> AsyncIterator[ChatModel]:
    model = load_model(tiny_gguf)
    yield model
    await model.close()


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(local_bot_api=True) as server:
        server.webhook_backoff = (0.1, 2.0, 0.5)
        yield server


async def post_update(port: int, update: dict[str, Any], secret: str | None) -> int:
    """What a stranger (or Telegram) sends to the bot's webhook; the HTTP status."""
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    async with (
        aiohttp.ClientSession() as session,
        session.post(backend_url(port), data=json.dumps(update), headers=headers) as response,
    ):
        return response.status


def user_update(update_id: int, text: str, user_id: int = OWNER) -> dict[str, Any]:
    user = {"id": user_id, "is_bot": False, "first_name": "Мила", "language_code": "ru"}
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id % 100000,
            "date": 1_700_000_000,
            "chat": {"id": user_id, "type": "private", "first_name": "Мила"},
            "from": user,
            "text": text,
        },
    }


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        (None, "WEBHOOK_SECRET is not set"),
        ("has space", "WEBHOOK_SECRET may only hold 1-256 letters"),
        ("x" * 257, "WEBHOOK_SECRET may only hold 1-256 letters"),
        ("пароль", "WEBHOOK_SECRET may only hold 1-256 letters"),
    ],
)
def test_webhook_mode_needs_a_well_formed_secret(secret: str | None, says: str) -> None:
    settings = Settings(
        _env_file=None, webhook_url="https://bot.example.org/tg", webhook_secret=secret
    )  # type: ignore[call-arg]
    with pytest.raises(StartupError) as refused:
        preflight.webhook(settings)
    message = str(refused.value)
    assert message.startswith(says) and message.endswith(".") and "\n" not in message
    assert secret is None or secret not in str(refused.value)


def test_webhook_settings_when_well_formed() -> None:
    settings = Settings(
        _env_file=None, webhook_url="https://bot.example.org/tg", webhook_secret="A-z_09"
    )  # type: ignore[call-arg]
    assert preflight.webhook(settings) == preflight.Webhook(
        "https://bot.example.org/tg", "/tg", "A-z_09"
    )
    assert preflight.webhook(Settings(_env_file=None)) is None  # type: ignore[call-arg]
    with pytest.raises(StartupError, match="WEBHOOK_URL is not a web address"):
        preflight.webhook(
            Settings(_env_file=None, webhook_url="bot.example.org", webhook_secret="a")
        )  # type: ignore[call-arg]


async def test_the_process_refuses_webhook_mode_without_a_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in BOT_ENV}
    env.update(
        BOT_TOKEN="999:" + "A" * 35,
        MODEL_PATH=str(tmp_path / "missing.gguf"),
        WEBHOOK_URL="https://bot.example.org/tg",
    )
    (tmp_path / "missing.gguf").write_bytes(b"GGUF")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert stderr.decode().startswith("domovoy: WEBHOOK_SECRET is not set")


async def user_texts(bot: Running, user_id: int = OWNER) -> list[str]:
    return [r.text for r in await bot.history(user_id) if r.role == "user"]


async def test_round_trip_sets_the_webhook_with_secret_and_allowed_updates(
    chat_model: ChatModel, tmp_path: Path, tg: FakeTelegram
) -> None:
    port = free_port()
    tg.webhook_backends([backend_url(port)])
    async with running_bot(chat_model, tmp_path, tg, **webhook_overrides(port)) as bot:
        tg.push_message(OWNER, "Привет! Как дела?")
        await bot.wait_reply(OWNER)
        await bot.wait(lambda: tg.texts(OWNER))
        [call] = tg.calls("setWebhook")
        used = bot.app.dispatcher.resolve_used_update_types()
        assert call.params["url"] == "http://127.0.0.1:9/telegram"
        assert call.params["secret_token"] == SECRET
        assert sorted(call.params["allowed_updates"]) == sorted(used)
        assert call.params["max_connections"] == 40
        assert not call.params.get("drop_pending_updates")
        assert tg.delivered() and all(d.url == backend_url(port) for d in tg.delivered())
    history = await bot.history(OWNER)
    assert [(r.role, r.status) for r in history] == [("user", "complete"), ("bot", "complete")]
    assert not tg.calls("getUpdates")  # no polling in webhook mode
    assert not tg.calls("deleteWebhook")  # the other processes keep serving it
    assert tg._m_getWebhookInfo({})["url"] == "http://127.0.0.1:9/telegram"


async def test_requests_without_the_right_secret_get_401_and_do_nothing(
    chat_model: ChatModel, tmp_path: Path, tg: FakeTelegram
) -> None:
    port = free_port()
    tg.webhook_backends([backend_url(port)])
    async with running_bot(chat_model, tmp_path, tg, **webhook_overrides(port)) as bot:
        assert await post_update(port, user_update(5, "без секрета"), None) == 401
        assert await post_update(port, user_update(6, "чужой секрет"), "wrong-secret") == 401
        assert await post_update(port, user_update(7, "почти"), SECRET + "x") == 401
        async with aiohttp.ClientSession() as session, session.get(backend_url(port)) as got:
            assert got.status == 405  # what the README's HAProxy health check expects
        # The sentinel: a real message after them is stored and answered, alone.
        tg.push_message(OWNER, "настоящее сообщение")
        await bot.wait_reply(OWNER)
        assert await user_texts(bot) == ["настоящее сообщение"]
        assert tg.texts(OWNER) and len(tg.sent_messages(OWNER)) == 1


async def test_the_200_comes_once_the_message_is_stored_and_the_reply_goes_on(
    chat_model: ChatModel, tmp_path: Path, tg: FakeTelegram
) -> None:
    instrument(chat_model, 0.05)  # a reply of ~3 s: still being written at the acknowledgement
    port = free_port()
    tg.webhook_backends([backend_url(port)])
    at_ack: list[tuple[list[str], list[str]]] = []
    async with running_bot(chat_model, tmp_path, tg, **webhook_overrides(port)) as bot:

        async def on_ack(update: dict[str, Any], delivery: Delivery) -> None:
            at_ack.append((await user_texts(bot), tg.texts(OWNER)))

        tg.on_webhook_ack = on_ack
        tg.push_message(OWNER, "первое")
        tg.push_message(OWNER, "второе")
        await bot.wait_reply(OWNER, count=2)
    # Each acknowledgement found its message stored, before any reply was finished.
    assert at_ack == [(["первое"], []), (["первое", "второе"], [])]


async def test_a_message_sent_during_shutdown_is_refused_and_redelivered_after_restart(
    chat_model: ChatModel, tmp_path: Path, tg: FakeTelegram
) -> None:
    instrument(chat_model, 0.05)
    port = free_port()
    tg.webhook_backends([backend_url(port)])
    async with running_bot(chat_model, tmp_path, tg, **webhook_overrides(port)) as bot:
        tg.push_message(OWNER, "Расскажи длинную сказку")
        await bot.wait(lambda: tg.drafts(OWNER))
        # The interrupted reply's delivery waits out a 429: the shutdown takes a second.
        tg.fail_next("sendMessage", status=429, retry_after=1)
        bot.stop.set()
        assert await post_update(port, user_update(900, "зонд"), SECRET) == 503
        late = tg.push_message(OWNER, "пока ты выключаешься")["update_id"]
        await bot.wait(lambda: [d for d in tg.webhook_deliveries if d.update_id == late])
        await asyncio.wait_for(bot.task, 15)
    refused = [d for d in tg.webhook_deliveries if d.update_id == late]
    assert refused and not any(d.ok for d in refused)
    assert refused[0].status in (503, None)  # refused while stopping, or nobody listening
    assert await user_texts(bot) == ["Расскажи длинную сказку"]  # neither probe nor late one

    async with running_bot(chat_model, tmp_path, tg, **webhook_overrides(port)) as again:
        await again.wait(lambda: tg.delivered(late), within=30)
        await again.wait_reply(OWNER, count=2)
        assert await user_texts(again) == ["Расскажи длинную сказку", "пока ты выключаешься"]


async def test_a_bot_process_in_webhook_mode_serves_and_stops_cleanly(
    tiny_gguf: Path, tmp_path: Path, tg: FakeTelegram
) -> None:
    async with webhook_bots(tg, 1, model=tiny_gguf, folder=tmp_path, database_url=None) as bots:
        tg.push_message(OWNER, "Привет")
        await tg.wait_for(lambda: tg.texts(OWNER), timeout=60)
        code = await bots[0].stop()
        assert code == 0, bots[0].log()[-3000:]
        assert "Traceback" not in bots[0].log()
    assert not tg.calls("deleteWebhook") and not tg.calls("getUpdates")
    history = await stored_history(f"sqlite+aiosqlite:///{tmp_path / 'data-0' / 'domovoy.db'}")
    assert [(role, status) for role, status, _ in history[OWNER]] == [
        ("user", "complete"),
        ("bot", "complete"),
    ]


async def stored_history(url: str, *users: int) -> dict[int, list[tuple[str, str, str]]]:
    db = create_engine(url)
    try:
        async with create_session_factory(db)() as session:
            found = {}
            for user in users or (OWNER,):
                conversation = await ConversationRepository(session).current(user, user)
                records = await MessageRepository(session).history(conversation.id)
                found[user] = [(r.role, r.status, r.text) for r in records]
            return found
    finally:
        await db.dispose()


async def fresh_postgres(url: str) -> None:
    db = create_engine(url)
    try:
        async with db.begin() as conn:
            await conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
            await conn.exec_driver_sql("CREATE SCHEMA public")
        await migrate(db)  # once, before the processes start side by side
    finally:
        await db.dispose()


@pytest.mark.skipif(not POSTGRES_URL, reason="set DOMOVOY_TEST_POSTGRES_URL (wiped) to run")
async def test_two_processes_behind_the_balancer_on_one_postgres(
    tiny_gguf: Path, tmp_path: Path, tg: FakeTelegram
) -> None:
    assert POSTGRES_URL is not None
    await fresh_postgres(POSTGRES_URL)
    users = [2001, 2002, 2003]
    async with webhook_bots(
        tg,
        2,
        model=tiny_gguf,
        folder=tmp_path,
        database_url=POSTGRES_URL,
        allowed_users=",".join(map(str, users)),
    ) as bots:
        for round_ in (1, 2):
            for user in users:
                tg.push_message(user, f"{user}: сообщение {round_}")
        await tg.wait_for(lambda: all(len(tg.texts(u)) == 2 for u in users), timeout=120)
        for bot in bots:
            assert await bot.stop() == 0, bot.log()[-3000:]
    assert {d.url for d in tg.delivered()} == {bot.url for bot in bots}
    history = await stored_history(POSTGRES_URL, *users)
    for user in users:
        said = [text for role, _, text in history[user] if role == "user"]
        assert said == [f"{user}: сообщение 1", f"{user}: сообщение 2"]
        replies = [status for role, status, _ in history[user] if role == "bot"]
        assert replies == ["complete", "complete"]
