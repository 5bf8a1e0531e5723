"""What the chat core needs from an engine, local (`models.runtime.engine.ChatEngine`) or
remote (`models.remote.engine.RemoteEngine`): submit a token prompt under a conversation key,
follow the reply, stop it, and drop what is kept for a conversation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from models.runtime.generation import GenerationResult
    from models.runtime.scheduler import Transcript


class GenerationHandle(Protocol):
    """One request: waiting, then running, then done."""

    @property
    def started(self) -> asyncio.Event: ...

    @property
    def position(self) -> int:
        """0 while running or done, otherwise how many requests are ahead plus one."""
        ...

    @property
    def cancelled(self) -> bool: ...

    @property
    def waiting_for_server(self) -> asyncio.Event:
        """Set while no engine server is up (ENGINE=remote): the reply waits for one."""
        ...

    def cancel(self) -> None:
        """Stop soon; the text produced so far stays in the result."""
        ...

    def stream(self) -> AsyncIterator[str]:
        """Text deltas, never splitting a UTF-8 character."""
        ...

    async def result(self) -> GenerationResult: ...

    @property
    def done(self) -> bool: ...


class Engine(Protocol):
    n_ctx: int

    @property
    def stop_ids(self) -> frozenset[int]: ...

    @property
    def parallel(self) -> int:
        """Replies generated at once."""
        ...

    def submit(
        self, prompt: list[int], *, max_new_tokens: int, key: str | None = None
    ) -> GenerationHandle: ...

    def transcript(self, key: str) -> Transcript | None:
        """The conversation's last finished reply: its prompt and the ids generated."""
        ...

    def last_prompt(self, key: str) -> tuple[bytes, tuple[int, ...]] | None: ...

    def note_prompt(self, key: str, digest: bytes, tokens: list[int]) -> None: ...

    async def invalidate(self, key: str) -> None:
        """The conversation's beginning changed: what is kept for it is useless."""
        ...

    async def forget(self, key: str) -> None:
        """Erase every trace of the conversation the engine keeps."""
        ...

    def cancel_all(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class SlotClaim:
    """A server slot held for one request."""

    slot: int
    # The slot's last request was this conversation's: its cells may be reused (cache_prompt).
    # Otherwise they hold another conversation's tokens, which must not be reused.
    cached: bool


class SlotLedger(Protocol):
    """Which conversation each slot of a remote server last served, shared by every bot
    process that uses the server, so that a request reuses cells of its own conversation only.
    In-process for one bot process; in the database (PostgreSQL) for several."""

    def claim(self, server: str, slots: int, key: str) -> AbstractAsyncContextManager[SlotClaim]:
        """Wait for a free slot of `server` (which has `slots`), preferring the one `key` used
        last, else the least recently used; record `key` as its owner; hold it until exit."""
        ...

    async def release_owner(self, key: str) -> list[tuple[str, int]]:
        """Forget `key` as an owner everywhere; returns the (server, slot) pairs it owned,
        for the caller to erase on the servers."""
        ...
