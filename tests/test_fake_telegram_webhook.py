"""The fake Bot API server's webhooks behave as Telegram's: the methods, their errors, and
delivery (secret header, retries, per-chat order, the load balancer, duplicates)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import TelegramBadRequest, TelegramConflictError
from aiohttp import web
from fake_telegram import FakeTelegram
from fake_telegram_webhook import GET_UPDATES_CONFLICT, SECRET_HEADER

SECRET = "s3cret_-token"


@dataclass
class Receiver:
    """A real HTTP endpoint standing in for a bot process: records each POST; answers with
    the queued statuses (then 200); holds the answer for an update id until released."""

    name: str
    url: str = ""
    received: list[tuple[int, str | None]] = field(default_factory=list)  # (update_id, secret)
    statuses: list[int] = field(default_factory=list)
    held: dict[int, asyncio.Event] = field(default_factory=dict)
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        update = json.loads(await request.read())
        self.received.append((update["update_id"], request.headers.get(SECRET_HEADER)))
        if update["update_id"] in self.held:
            await self.held[update["update_id"]].wait()
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response({}, status=status)

    def ids(self) -> list[int]:
        return [update_id for update_id, _ in self.received]


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(local_bot_api=True) as server:
        server.webhook_backoff = (0.05, 2.0, 0.2)
        yield server


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    started = [Receiver("a"), Receiver("b")]
    for receiver in started:
        await receiver.start()
    yield started
    for receiver in started:
        assert receiver.runner is not None
        await receiver.runner.cleanup()


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    bot = Bot(tg.token, session=AiohttpSession(api=tg.api_server()))
    yield bot
    await bot.session.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_telegram_rules_for_the_url_and_the_secret() -> None:
    async with FakeTelegram() as tg:
        bot = Bot(tg.token, session=AiohttpSession(api=tg.api_server()))
        try:
            cases = {
                "http://bot.example.org/hook": "An HTTPS URL must be provided for webhook",
                "https://bot.example.org:8081/hook": "only on ports 80, 88, 443 or 8443",
                "https://127.0.0.1/hook": "IP address 127.0.0.1 is reserved",
                "ftp://bot.example.org/": "invalid webhook URL specified",
            }
            for url, text in cases.items():
                with pytest.raises(TelegramBadRequest, match="Bad Request: .*" + text):
                    await bot.set_webhook(url)
            with pytest.raises(TelegramBadRequest, match="secret token contains unallowed"):
                await bot.set_webhook("https://bot.example.org/hook", secret_token="a b")
            with pytest.raises(TelegramBadRequest, match="secret token is too long"):
                await bot.set_webhook("https://bot.example.org/hook", secret_token="a" * 257)
            assert (await bot.get_webhook_info()).url == ""
            assert await bot.set_webhook("https://bot.example.org:8443/hook", max_connections=500)
            info = await bot.get_webhook_info()
            assert info.url == "https://bot.example.org:8443/hook"
            assert info.max_connections == 100  # clamped, as Telegram does
        finally:
            await bot.session.close()


async def test_webhook_info_and_polling_refused_while_set(
    tg: FakeTelegram, bot: Bot, receivers: list[Receiver]
) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=30))
    await tg.wait_for(lambda: tg.calls("getUpdates"))
    await bot.set_webhook(
        receivers[0].url,
        secret_token=SECRET,
        max_connections=3,
        allowed_updates=["message", "callback_query"],
    )
    with pytest.raises(TelegramConflictError, match="terminated by setWebhook request"):
        await poll
    with pytest.raises(TelegramConflictError) as refused:
        await bot.get_updates()
    assert refused.value.message == GET_UPDATES_CONFLICT
    held = tg.push_message(7, "held")["update_id"]
    receivers[0].held[held] = gate = asyncio.Event()
    await tg.wait_for(lambda: len(receivers[0].received) == 1)
    info = await bot.get_webhook_info()
    assert (info.url, info.max_connections, info.pending_update_count) == (receivers[0].url, 3, 1)
    assert sorted(info.allowed_updates or []) == ["callback_query", "message"]
    assert info.ip_address == "127.0.0.1" and info.last_error_message is None
    # Updates of a type not allowed are not delivered.
    tg.push_update({"edited_message": {"message_id": 1, "date": 0, "chat": {"id": 7}}})
    assert tg.dropped_updates and tg.dropped_updates[-1].get("edited_message")
    assert await bot.delete_webhook()
    assert (await bot.get_webhook_info()).url == ""
    assert [u.message.text for u in await bot.get_updates() if u.message] == ["held"]
    gate.set()


async def test_delivery_carries_the_secret_and_retries_with_backoff(
    tg: FakeTelegram, bot: Bot, receivers: list[Receiver]
) -> None:
    hook = receivers[0]
    hook.statuses = [500, 401]
    await bot.set_webhook(hook.url, secret_token=SECRET)
    update = tg.push_message(42, "привет")
    await tg.wait_for(lambda: tg.delivered(update["update_id"]))
    assert hook.received == [(update["update_id"], SECRET)] * 3
    attempts = [d for d in tg.webhook_deliveries if d.update_id == update["update_id"]]
    assert [d.status for d in attempts] == [500, 401, 200]
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # exponential backoff
    info = await bot.get_webhook_info()
    assert info.last_error_message == "Wrong response from the webhook: 401 Unauthorized"
    assert info.last_error_date is not None and info.pending_update_count == 0


async def test_connection_refused_is_retried_and_reported(tg: FakeTelegram, bot: Bot) -> None:
    await bot.set_webhook(f"http://127.0.0.1:{closed_port()}/hook", secret_token=SECRET)
    update = tg.push_message(42, "никого нет")
    await tg.wait_for(lambda: len(tg.webhook_deliveries) >= 3)
    assert all(d.status is None and d.error == "Connection refused" for d in tg.webhook_deliveries)
    info = await bot.get_webhook_info()
    assert info.last_error_message == "Connection refused" and info.pending_update_count == 1
    # The update is still there for polling once the webhook is gone.
    await bot.delete_webhook()
    assert [u.update_id for u in await bot.get_updates()] == [update["update_id"]]


async def test_one_chat_in_order_other_chats_meanwhile(
    tg: FakeTelegram, bot: Bot, receivers: list[Receiver]
) -> None:
    hook = receivers[0]
    await bot.set_webhook(hook.url, secret_token=SECRET)
    first = tg.push_message(1, "first")["update_id"]
    hook.held[first] = gate = asyncio.Event()
    second = tg.push_message(1, "second")["update_id"]
    other = tg.push_message(2, "another chat")["update_id"]
    await tg.wait_for(lambda: other in hook.ids())
    await asyncio.sleep(0.2)  # time for a wrong early delivery of `second` to show
    assert hook.ids().count(second) == 0 and first in hook.ids()
    gate.set()
    await tg.wait_for(lambda: tg.delivered(second))
    assert hook.ids().index(first) < hook.ids().index(second)


async def test_load_balancer_spreads_retries_and_duplicates_over_backends(
    tg: FakeTelegram, bot: Bot, receivers: list[Receiver]
) -> None:
    a, b = receivers
    tg.webhook_backends([a.url, b.url])
    await bot.set_webhook("http://lb.example/hook", secret_token=SECRET)
    ids = [tg.push_message(user, f"m{user}")["update_id"] for user in (1, 2, 3, 4)]
    await tg.wait_for(lambda: all(tg.delivered(i) for i in ids))
    assert a.received and b.received and len(a.received) + len(b.received) == 4
    # A failing backend: the retry goes to the other one.
    a.statuses, b.statuses = [503, 503], [503, 503]
    retried = tg.push_message(5, "retry")["update_id"]
    await tg.wait_for(lambda: tg.delivered(retried))
    urls = [d.url for d in tg.webhook_deliveries if d.update_id == retried]
    assert all(x != y for x, y in itertools.pairwise(urls))
    # A duplicate: the same update again, to the other backend, before the chat's next one.
    tg.duplicate_next()
    twice = tg.push_message(6, "twice")["update_id"]
    after = tg.push_message(6, "after")["update_id"]
    await tg.wait_for(lambda: tg.delivered(after))
    copies = tg.delivered(twice)
    assert len(copies) == 2 and copies[0].url != copies[1].url and copies[1].duplicate
    assert copies[1].at < tg.delivered(after)[0].at


async def test_the_acknowledgement_hook_runs_before_the_next_update_of_the_chat(
    tg: FakeTelegram, bot: Bot, receivers: list[Receiver]
) -> None:
    seen: list[int] = []

    async def on_ack(update: dict[str, object], _: object) -> None:
        await asyncio.sleep(0.05)
        seen.append(int(str(update["update_id"])))

    tg.on_webhook_ack = on_ack
    await bot.set_webhook(receivers[0].url)
    ids = [tg.push_message(1, text)["update_id"] for text in ("a", "b")]
    await tg.wait_for(lambda: len(seen) == 2)
    assert seen == ids == receivers[0].ids()
    assert receivers[0].received[0][1] is None  # no secret set, no header
