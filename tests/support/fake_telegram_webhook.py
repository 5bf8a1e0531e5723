"""Webhooks for the fake Bot API server, mixed into FakeTelegram.

Methods, as the Bot API describes them: ``setWebhook`` (url, secret_token, max_connections,
allowed_updates, drop_pending_updates; an empty url removes the webhook), ``deleteWebhook``
(drop_pending_updates) and ``getWebhookInfo`` (url, has_custom_certificate,
pending_update_count, ip_address, last_error_date, last_error_message, max_connections,
allowed_updates). While a webhook is set getUpdates answers 409 "Conflict: can't use getUpdates
method while webhook is active; use deleteWebhook to delete the webhook first", and a waiting
long poll ends with 409 "Conflict: terminated by setWebhook request".

api.telegram.org's rules hold unless ``FakeTelegram(local_bot_api=True)``, which follows a
local Bot API server (``--local``): HTTP URLs, any port and address, max_connections up to
100000. Otherwise: "Bad Request: bad webhook: An HTTPS URL must be provided for webhook",
"Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443",
"Bad Request: bad webhook: IP address 127.0.0.1 is reserved"; everywhere "Bad Request: invalid
webhook URL specified", "Bad Request: secret token is too long", "Bad Request: secret token
contains unallowed characters". max_connections is clamped to 1..100 (40 when absent).

Delivery: every queued update is POSTed as JSON to the webhook (with the
``X-Telegram-Bot-Api-Secret-Token`` header when a secret is set) until an answer is 2xx;
non-2xx answers, timeouts and refused connections are retried with exponential backoff
(``webhook_backoff``) and reported in getWebhookInfo's last_error_*. One chat's updates go one
after another (the next only once the previous was acknowledged); different chats go at
once, up to max_connections.

Test controls:
    webhook_backends(urls, *, policy="round_robin" | "random", seed=0) -- act as the load
        balancer in front of several bot processes: each delivery attempt goes to the next
        (or a random) backend instead of the webhook URL; a retry goes to another one
    duplicate_next(count=1) -- the next `count` acknowledged updates are delivered again at
        once, to another backend, as Telegram does when an acknowledgement is lost
    webhook_deliveries -> list[Delivery]  every attempt: update_id, url, status, error,
        duplicate, at, answered_at; delivered(update_id) -> the acknowledged ones
    on_webhook_ack -- async callback(update, delivery) awaited when a 2xx arrives, before the
        update counts as delivered (what is stored at the moment of the acknowledgement)
    webhook_backoff = (first, factor, cap) seconds; webhook_timeout seconds per attempt
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from fake_telegram import ApiError

JSON = dict[str, Any]
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
WEBHOOK_PORTS = (80, 88, 443, 8443)
GET_UPDATES_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to "
    "delete the webhook first"
)
POLL_TERMINATED = "Conflict: terminated by setWebhook request"


@dataclass
class Delivery:
    """One POST of an update to the webhook (or a backend behind the balancer)."""

    update_id: int
    url: str
    at: float
    duplicate: bool = False
    status: int | None = None  # None: no HTTP answer (refused, timed out)
    error: str | None = None  # as getWebhookInfo's last_error_message words it
    answered_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class _Webhook:
    url: str
    secret: str | None
    max_connections: int


def line_of(update: JSON) -> str:
    """Which updates Telegram delivers one after another: those of one chat."""
    for value in update.values():
        if not isinstance(value, dict):
            continue
        chat = value.get("chat") or (value.get("message") or {}).get("chat")
        if chat is not None:
            return f"chat:{chat['id']}"
        if "from" in value:
            return f"user:{value['from']['id']}"
    return f"update:{update['update_id']}"


class WebhookMethods:
    """The webhook methods and delivery; relies on FakeTelegram's update queue."""

    if TYPE_CHECKING:
        _updates: list[JSON]
        _allowed_updates: frozenset[str]
        _closing: bool
        _changed: asyncio.Event

        def _notify(self) -> None: ...

    local_bot_api: bool
    webhook_deliveries: list[Delivery]
    webhook_backoff: tuple[float, float, float]
    webhook_timeout: float
    on_webhook_ack: Callable[[JSON, Delivery], Awaitable[None]] | None
    _webhook: _Webhook | None
    _backends: list[str]
    _pick: Callable[[str | None], str] | None
    _duplicates: int
    _pump: asyncio.Task[None] | None
    _in_flight: dict[str, asyncio.Task[None]]
    _client: aiohttp.ClientSession | None
    _last_error: tuple[int, str] | None

    def _init_webhook(self, local_bot_api: bool) -> None:
        self.local_bot_api = local_bot_api
        self.webhook_deliveries = []
        self.webhook_backoff = (0.1, 2.0, 2.0)
        self.webhook_timeout = 30.0
        self.on_webhook_ack = None
        self._webhook = None
        self._backends = []
        self._pick = None
        self._duplicates = 0
        self._pump = None
        self._in_flight = {}
        self._client = None
        self._last_error = None

    async def _stop_webhook(self) -> None:
        tasks = [t for t in (self._pump, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    # ---- test controls ---------------------------------------------------------------------

    def webhook_backends(
        self, urls: list[str], *, policy: str = "round_robin", seed: int = 0
    ) -> None:
        if not urls or policy not in ("round_robin", "random"):
            raise ValueError("give backend URLs and a policy: round_robin or random")
        self._backends = list(urls)
        turns = itertools.cycle(range(len(urls)))
        rng = random.Random(seed)

        def pick(avoid: str | None) -> str:
            choices = [u for u in self._backends if u != avoid] or self._backends
            if policy == "random":
                return rng.choice(choices)
            while (url := self._backends[next(turns)]) not in choices:
                pass
            return url

        self._pick = pick

    def duplicate_next(self, count: int = 1) -> None:
        self._duplicates += count

    def delivered(self, update_id: int | None = None) -> list[Delivery]:
        return [
            d
            for d in self.webhook_deliveries
            if d.ok and (update_id is None or d.update_id == update_id)
        ]

    # ---- methods ---------------------------------------------------------------------------

    def _m_setWebhook(self, p: JSON) -> bool:
        from fake_telegram import ALL_UPDATES, bad_request

        url = str(p.get("url") or "")
        if not url:  # "Use an empty string to remove webhook integration"
            return self._m_deleteWebhook(p)
        self._check_url(url)
        secret = p.get("secret_token")
        if secret is not None:
            secret = str(secret)
            if len(secret) > 256:
                raise bad_request("secret token is too long")
            if not secret or any(not (c.isascii() and (c.isalnum() or c in "_-")) for c in secret):
                raise bad_request("secret token contains unallowed characters")
        ceiling = 100_000 if self.local_bot_api else 100
        connections = int(p.get("max_connections") or 40)
        if "allowed_updates" in p and p["allowed_updates"] is not None:
            wanted = frozenset(p["allowed_updates"]) & ALL_UPDATES
            from fake_telegram import DEFAULT_UPDATES

            self._allowed_updates = wanted or DEFAULT_UPDATES
        if p.get("drop_pending_updates"):
            self._updates.clear()
        self._webhook = _Webhook(url, secret, min(max(connections, 1), ceiling))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._pump_updates(), name="webhook pump")
        self._notify()  # a waiting long poll ends with its 409
        return True

    def _m_deleteWebhook(self, p: JSON) -> bool:
        if p.get("drop_pending_updates"):
            self._updates.clear()
        self._webhook = None
        self._last_error = None
        self._notify()
        return True

    def _m_getWebhookInfo(self, p: JSON) -> JSON:
        info: JSON = {
            "url": self._webhook.url if self._webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self._webhook is not None:
            host = urllib.parse.urlsplit(self._webhook.url).hostname or ""
            info["ip_address"] = "127.0.0.1" if host == "localhost" else host
            info["max_connections"] = self._webhook.max_connections
            info["allowed_updates"] = sorted(self._allowed_updates)
            if self._last_error is not None:
                info["last_error_date"], info["last_error_message"] = self._last_error
        return info

    def _refuse_polling(self) -> None:
        """Called by getUpdates before and while it waits."""
        from fake_telegram import ApiError

        if self._webhook is not None:
            raise ApiError(409, GET_UPDATES_CONFLICT)

    def _poll_ended_by_webhook(self) -> ApiError | None:
        from fake_telegram import ApiError

        return ApiError(409, POLL_TERMINATED) if self._webhook is not None else None

    def _check_url(self, url: str) -> None:
        from fake_telegram import bad_request

        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            raise bad_request("invalid webhook URL specified") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad_request("invalid webhook URL specified")
        if self.local_bot_api:
            return
        if parts.scheme != "https":
            raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        if (port or 443) not in WEBHOOK_PORTS:
            raise bad_request(
                "bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443"
            )
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(parts.hostname)
            if not address.is_global:
                raise bad_request(f"bad webhook: IP address {address} is reserved")

    # ---- delivery --------------------------------------------------------------------------

    async def _pump_updates(self) -> None:
        """Start a delivery for the first waiting update of every chat with none in flight."""
        while self._webhook is not None and not self._closing:
            changed = self._changed
            for update in list(self._updates):
                if len(self._in_flight) >= self._webhook.max_connections:
                    break
                line = line_of(update)
                if line not in self._in_flight:
                    self._in_flight[line] = asyncio.create_task(self._deliver(update, line))
            await changed.wait()

    async def _deliver(self, update: JSON, line: str) -> None:
        try:
            failures, last_url, duplicate = 0, None, False
            while (webhook := self._webhook) is not None and not self._closing:
                url = (
                    self._pick(last_url if failures or duplicate else None) if self._pick else None
                )
                delivery = Delivery(update["update_id"], url or webhook.url, time.monotonic())
                delivery.duplicate = duplicate
                self.webhook_deliveries.append(delivery)
                await self._post(update, webhook, delivery)
                last_url = delivery.url
                if not delivery.ok:
                    failures += 1
                    first, factor, cap = self.webhook_backoff
                    await asyncio.sleep(min(cap, first * factor ** (failures - 1)))
                    continue
                if self.on_webhook_ack is not None:
                    await self.on_webhook_ack(update, delivery)
                if self._duplicates > 0 and not duplicate:
                    self._duplicates -= 1
                    duplicate, failures = True, 0
                    continue
                self._updates = [u for u in self._updates if u is not update]
                return
        finally:
            del self._in_flight[line]
            self._notify()

    async def _post(self, update: JSON, webhook: _Webhook, delivery: Delivery) -> None:
        if self._client is None:
            self._client = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json"}
        if webhook.secret:
            headers[SECRET_HEADER] = webhook.secret
        try:
            async with self._client.post(
                delivery.url,
                data=json.dumps(update, ensure_ascii=False).encode(),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.webhook_timeout),
                allow_redirects=False,
            ) as response:
                await response.read()
                delivery.status = response.status
                if not delivery.ok:
                    delivery.error = (
                        f"Wrong response from the webhook: {response.status} {response.reason}"
                    )
        except TimeoutError:
            delivery.error = "Read timeout expired"
        except aiohttp.ClientConnectorError:
            delivery.error = "Connection refused"
        except aiohttp.ClientError as exc:
            delivery.error = f"Connection error: {type(exc).__name__}"
        delivery.answered_at = time.monotonic()
        if delivery.error is not None:
            self._last_error = (int(time.time()), delivery.error)
        self._notify()
