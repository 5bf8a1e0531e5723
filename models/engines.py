"""What the chat core needs from an engine, local (`models.runtime.engine.ChatEngine`) or
remote (`models.remote.engine.RemoteEngine`): submit a token prompt under a conversation key,
follow the reply, stop it, and drop what is kept for a conversation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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

    def cancel(self) -> None:
        """Stop soon; the text produced so far stays in the result."""
        ...

    def stream(self) -> AsyncIterator[str]:
        """Text deltas, never splitting a UTF-8 character."""
        ...

    async def result(self) -> GenerationResult: ...


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
