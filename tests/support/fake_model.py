"""A stand-in for the model in the fast test tier: it answers "echo: <last message>" one
word at a time, records every prompt it was given, and can be held so that replies queue up.
Only handler and chat-core logic is under test there; the real model runs in the e2e tier."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.prompt.templates import ChatMessage
from models.runtime.engine import GenerationResult


class CharTokenizer:
    def encode(self, text: str, special: bool = False) -> list[int]:
        return [ord(char) for char in text]


@dataclass
class FakeWindow:
    budget: int = 1000

    def system_overhead(self, prompt: str) -> int:
        return len(prompt)


@dataclass
class FakePrompt:
    tokens: list[int]
    messages: list[ChatMessage]
    max_new_tokens: int = 64
    truncated_last: bool = False
    dropped_turns: int = 0


class FakeGeneration:
    def __init__(self, engine: FakeEngine, reply: str, key: str | None) -> None:
        self.key = key
        self.started = asyncio.Event()
        self.waiting_for_server = asyncio.Event()
        self.cancelled = False
        self._engine = engine
        self._reply = reply
        self._sent: list[str] = []
        self._done = asyncio.Event()

    @property
    def position(self) -> int:
        return self._engine.position_of(self)

    def cancel(self) -> None:
        self.cancelled = True
        self._engine.advance()

    async def stream(self) -> AsyncIterator[str]:
        await self.started.wait()
        try:
            for word in self._reply.split(" "):
                while self._engine.stalled(self):  # noqa: ASYNC110 - a test's switch
                    await asyncio.sleep(0.005)
                if self.cancelled:
                    break
                piece = word if not self._sent else f" {word}"
                self._sent.append(piece)
                yield piece
                await asyncio.sleep(0)
        finally:
            self._engine.done(self)
            self._done.set()

    async def result(self) -> GenerationResult:
        await self._done.wait()
        text = "".join(self._sent)
        finish = "cancelled" if self.cancelled else "stop"
        return GenerationResult(text, len(self._sent), 0, 0, finish, 0.0, 0.0)


@dataclass
class FakeEngine:
    """One generation at a time, in order of submission; `held` ones wait for `release()`."""

    held: bool = False
    stall_after: int | None = None  # words after which a generation waits until cancelled
    thinking: str | None = None  # like a reasoning model: "<think>{thinking}</think>" first
    submitted: list[FakeGeneration] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    _queue: list[FakeGeneration] = field(default_factory=list)

    def release(self) -> None:
        self.held = False
        self.advance()

    def submit(
        self, prompt: list[int], *, max_new_tokens: int, key: str | None = None, **_: Any
    ) -> FakeGeneration:
        text = "".join(chr(token) for token in prompt)
        reply = f"echo: {text.rsplit('|', 1)[-1]}"
        if self.thinking is not None:
            reply = f"<think>{self.thinking}</think> {reply}"
        generation = FakeGeneration(self, reply, key)
        self.submitted.append(generation)
        self._queue.append(generation)
        self.advance()
        return generation

    def position_of(self, generation: FakeGeneration) -> int:
        return self._queue.index(generation) + 1 if generation in self._queue else 0

    def stalled(self, generation: FakeGeneration) -> bool:
        limit = self.stall_after
        return limit is not None and len(generation._sent) >= limit and not generation.cancelled

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def advance(self) -> None:
        # A cancelled generation that never started ends at once, as in the real engine.
        for generation in [g for g in self._queue if g.cancelled and not g.started.is_set()]:
            generation.started.set()
        if self._queue and not self.held:
            self._queue[0].started.set()

    def done(self, generation: FakeGeneration) -> None:
        if generation in self._queue:
            self._queue.remove(generation)
        self.advance()

    async def invalidate(self, key: str) -> None:
        return None

    async def forget(self, key: str) -> None:
        self.forgotten.append(key)

    async def close(self) -> None:
        return None


@dataclass
class FakeChatModel:
    name: str = "fake"
    tokenizer: CharTokenizer = field(default_factory=CharTokenizer)
    window: FakeWindow = field(default_factory=FakeWindow)
    engine: FakeEngine = field(default_factory=FakeEngine)
    default_system_prompt: str | None = "Ты — помощник."
    prompts: list[list[ChatMessage]] = field(default_factory=list)

    def build_prompt(
        self, system: str | None, history: Sequence[ChatMessage], key: str | None = None
    ) -> FakePrompt:
        self.prompts.append(list(history))
        text = "|".join(message.content for message in history)
        return FakePrompt([ord(char) for char in text], list(history))

    async def close(self) -> None:
        return None
