"""`RemoteEngine`: the `models.engines.Engine` whose replies come from llama-server or vLLM.

The prompt is Domovoy's own token ids; the server streams generated ids back, which are
decoded here with the model's vocabulary. Conversation state lives on the servers (their
slots' cached tokens); what is kept here is which slot last served which conversation (the
`SlotLedger`), each conversation's last reply ids for token-exact follow-ups, and the health
of each server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from models.engines import SlotLedger
from models.remote.exchange import serve
from models.remote.handle import RemoteGeneration
from models.remote.pieces import Pieces
from models.remote.servers import ServerPool
from models.runtime.sampler import SamplingParams
from models.runtime.scheduler import Transcript, remember

logger = logging.getLogger(__name__)


class RemoteEngine:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        pool: ServerPool,
        ledger: SlotLedger,
        pieces: Pieces,
        n_ctx: int,
        stop_ids: frozenset[int],
        eog_ids: frozenset[int],
        sampling: SamplingParams,
        read_timeout: float,
        wait: float,
        health_interval: float,
    ) -> None:
        self.session = session
        self.pool = pool
        self.ledger = ledger
        self.pieces = pieces
        self.n_ctx = n_ctx
        self._stop_ids = stop_ids | eog_ids
        self.eog_ids = eog_ids  # llama-server stops at these by itself
        self.sampling = sampling
        self.read_timeout = read_timeout
        self.wait = wait
        self.pool_interval = health_interval
        self.transcripts: dict[str, Transcript] = {}
        self.prompts: dict[str, tuple[bytes, tuple[int, ...]]] = {}
        self.dropped: set[str] = set()  # forgotten while a reply ran: keep nothing of it
        self._queued: dict[str, list[RemoteGeneration]] = {}
        self._running: set[RemoteGeneration] = set()
        self._closed = False

    @property
    def stop_ids(self) -> frozenset[int]:
        return self._stop_ids

    @property
    def parallel(self) -> int:
        return sum(s.slots for s in self.pool.servers.values() if s.reached) or 1

    # -- requests -----------------------------------------------------------------------------

    def submit(
        self,
        prompt: list[int],
        *,
        max_new_tokens: int,
        key: str | None = None,
        ignore_eos: bool = False,
    ) -> RemoteGeneration:
        if self._closed:
            raise RuntimeError("the engine is closed")
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.n_ctx:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit n_ctx={self.n_ctx}")
        cap = min(max_new_tokens, self.n_ctx - len(prompt))
        handle = RemoteGeneration(self, list(prompt), cap, key, ignore_eos=ignore_eos)
        if key is not None:
            self.dropped.discard(key)
        self._running.add(handle)
        handle.run(self._serve)
        return handle

    async def _serve(self, handle: RemoteGeneration) -> None:
        try:
            await serve(self, handle)
        finally:
            self._running.discard(handle)

    def queue(self, handle: RemoteGeneration, server: str) -> None:
        self._queued.setdefault(server, []).append(handle)

    def unqueue(self, handle: RemoteGeneration) -> None:
        for waiting in self._queued.values():
            if handle in waiting:
                waiting.remove(handle)

    def position_of(self, handle: RemoteGeneration) -> int:
        """Like the local engine's: requests ahead plus one, counting one that runs; 0 once
        the request holds a slot (or waits for a server to come up)."""
        for waiting in self._queued.values():
            if handle in waiting:
                ahead = [h for h in waiting[: waiting.index(handle)] if not h.cancelled]
                return len(ahead) + 2
        return 0

    # -- conversations ------------------------------------------------------------------------

    def transcript(self, key: str) -> Transcript | None:
        return self.transcripts.get(key)

    def last_prompt(self, key: str) -> tuple[bytes, tuple[int, ...]] | None:
        return self.prompts.get(key)

    def note_prompt(self, key: str, digest: bytes, tokens: list[int]) -> None:
        remember(self.prompts, key, (digest, tuple(tokens)))

    async def invalidate(self, key: str) -> None:
        """The conversation's beginning changed: its slots are no longer worth reusing."""
        self._drop_tables(key)
        await self.ledger.release_owner(key)

    async def forget(self, key: str) -> None:
        """Erase the conversation's tokens from every slot it last used, on every server."""
        self._drop_tables(key)
        for url, slot in await self.ledger.release_owner(key):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await self._erase(url, slot)

    def _drop_tables(self, key: str) -> None:
        self.transcripts.pop(key, None)
        self.prompts.pop(key, None)
        if any(h.key == key for h in self._running):
            self.dropped.add(key)

    async def _erase(self, url: str, slot: int) -> None:
        quick = self.pool.quick
        async with self.session.post(f"{url}/slots/{slot}?action=erase", timeout=quick) as response:
            if response.status == 200:
                return
        # Without --slot-save-path llama-server refuses slot actions (501): overwrite the
        # slot's cells with a one-token prompt instead, evaluated from scratch.
        body = {"prompt": [0], "n_predict": 0, "id_slot": slot, "cache_prompt": False}
        async with self.session.post(f"{url}/completion", json=body, timeout=quick) as response:
            if response.status != 200:
                logger.warning("could not erase slot %d of %s (%d)", slot, url, response.status)

    def cancel_all(self) -> None:
        for handle in list(self._running):
            handle.cancel()

    async def close(self) -> None:
        self._closed = True
        self.cancel_all()
        tasks = [h._task for h in self._running if h._task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        await self.pool.close()
        await self.session.close()
