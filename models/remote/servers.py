"""The servers of ENGINE_URLS: which one serves a conversation, and which are up.

Each conversation sticks to one server by rendezvous (highest-random-weight) hashing, so its
follow-ups find their cached tokens there, and adding or losing a server moves only the
conversations that hashed to it. While that server is down the conversation moves to the next
server in its own order, and back when the server answers its health check again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

logger = logging.getLogger(__name__)

Dialect = Literal["llama-server", "openai"]


class EngineUnavailable(Exception):
    """No server answered within ENGINE_WAIT."""


class EngineRefused(Exception):
    """A server refused the request for a reason trying again will not change (401, 400)."""


@dataclass
class Server:
    url: str
    healthy: bool = False
    dialect: Dialect | None = None
    slots: int = 1
    n_ctx: int | None = None
    model: str | None = None  # /v1/completions' `model`
    reached: bool = False  # answered at least once since the start
    refusal: str | None = None  # why it refused us (a wrong ENGINE_API_KEY), if it did

    def __str__(self) -> str:
        return self.url


def rendezvous(urls: list[str], key: str) -> list[str]:
    """`urls` in the conversation's own order of preference."""

    def weight(url: str) -> bytes:
        return hashlib.blake2b(f"{url}\0{key}".encode(), digest_size=8).digest()

    return sorted(urls, key=weight, reverse=True)


class ServerPool:
    def __init__(
        self,
        urls: list[str],
        session: aiohttp.ClientSession,
        *,
        api: Literal["auto", "llama-server", "openai"],
        model: str | None,
        health_interval: float,
        quick_timeout: float = 11.0,
        n_vocab: int | None = None,
    ) -> None:
        self.servers = {url: Server(url) for url in urls}
        self._session = session
        self._n_vocab = n_vocab  # MODEL_PATH's: the servers must run the same vocabulary
        # /health, /props and slot erasing: a server that takes the connection and then
        # says nothing must not hold up the start or the health checks of the others.
        self.quick = aiohttp.ClientTimeout(total=quick_timeout)
        self._api = api
        self._model = model
        self._interval = health_interval
        self._changed = asyncio.Event()  # set whenever a server comes up
        self._task: asyncio.Task[None] | None = None

    # -- health -------------------------------------------------------------------------------

    async def probe(self, server: Server) -> bool:
        """GET /health (and, the first time, what kind of server it is); True when up."""
        try:
            async with self._session.get(f"{server.url}/health", timeout=self.quick) as response:
                if response.status != 200:
                    raise aiohttp.ClientResponseError(
                        response.request_info, (), status=response.status
                    )
            if server.dialect is None:
                await self._describe(server)
        except EngineRefused as exc:
            server.refusal = str(exc)
            self.mark_down(server, exc)
            return False
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            self.mark_down(server, exc)
            return False
        if not server.healthy:
            logger.info("engine server %s is up", server.url)
        server.healthy = server.reached = True
        self._changed.set()
        return True

    async def _describe(self, server: Server) -> None:
        props = await self._get_json(server, "/props") if self._api != "openai" else None
        if props is not None and "total_slots" in props:
            server.dialect = "llama-server"
            server.slots = int(props["total_slots"])
            settings = props.get("default_generation_settings", {})
            server.n_ctx = int(settings["n_ctx"]) if "n_ctx" in settings else None
            self._check_vocabulary(server, await self._get_json(server, "/v1/models"))
            return
        if self._api == "llama-server":
            raise ValueError(f"{server.url}/props does not describe a llama-server")
        server.dialect = "openai"
        models = await self._get_json(server, "/v1/models")
        self._check_vocabulary(server, models)
        data = (models or {}).get("data") or []
        first: dict[str, Any] = data[0] if data else {}
        server.model = self._model or first.get("id")
        # vLLM says its context as max_model_len; other servers may not say it at all.
        if "max_model_len" in first:
            server.n_ctx = int(first["max_model_len"])

    def _check_vocabulary(self, server: Server, models: dict[str, Any] | None) -> None:
        """Token-id prompts mean nothing to a model with another vocabulary: refuse such a
        server rather than send it garbage (llama-server tells n_vocab; vLLM does not)."""
        data = (models or {}).get("data") or [{}]
        served = (data[0].get("meta") or {}).get("n_vocab")
        if self._n_vocab is not None and served is not None and int(served) != self._n_vocab:
            raise EngineRefused(
                f"{server.url} runs a model with {served} tokens in its vocabulary, MODEL_PATH "
                f"one with {self._n_vocab}: give the bot and the servers the same GGUF file."
            )

    async def _get_json(self, server: Server, path: str) -> dict[str, Any] | None:
        async with self._session.get(f"{server.url}{path}", timeout=self.quick) as response:
            if response.status == 401:
                raise EngineRefused(
                    f"{server.url} refused ENGINE_API_KEY (401 on {path}): check ENGINE_API_KEY."
                )
            if response.status != 200:
                return None
            body = await response.json(content_type=None)
            return body if isinstance(body, dict) else None

    def mark_down(self, server: Server, reason: object) -> None:
        if server.healthy:
            logger.warning("engine server %s is down: %s", server.url, reason or "no answer")
        server.healthy = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="engine-health")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await asyncio.gather(*(self.probe(s) for s in self.servers.values()))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- choice -------------------------------------------------------------------------------

    def order(self, key: str) -> list[Server]:
        return [self.servers[url] for url in rendezvous(list(self.servers), key)]

    async def pick(
        self, key: str, *, avoid: set[str], wait: float, waiting: asyncio.Event
    ) -> Server:
        """The first healthy server in the conversation's order, not in `avoid` (failed for
        this request already, unless every server did). With none healthy, `waiting` is set
        and the call waits up to `wait` seconds for one to come up."""
        deadline = time.monotonic() + wait
        while True:
            healthy = [s for s in self.order(key) if s.healthy]
            fresh = [s for s in healthy if s.url not in avoid]
            if fresh or healthy:
                waiting.clear()
                return (fresh or healthy)[0]
            left = deadline - time.monotonic()
            if left <= 0:
                raise EngineUnavailable(
                    "No engine server answered within ENGINE_WAIT: " + ", ".join(self.servers)
                )
            waiting.set()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, self._interval))
            if not any(s.healthy for s in self.servers.values()):
                # Between two health checks: ask the servers now rather than only on schedule.
                await asyncio.gather(*(self.probe(s) for s in self.servers.values()))
