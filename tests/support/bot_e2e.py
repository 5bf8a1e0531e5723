"""Run the real bot in-process against the fake Bot API server, with the tiny real model and a
real SQLite file; helpers for the bot's end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from fake_telegram import FakeTelegram
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.lifecycle import open_services
from bot.settings import Settings
from bot.telegram.app import BotApp, build_app, serve
from models.runtime.chat_model import ChatModel
from models.runtime.engine import Generation
from storage.records import MessageRecord
from storage.repositories import ConversationRepository, MessageRepository, UserRepository

T = TypeVar("T")
OWNER = 1001  # an allowed user
ADMIN = 1002
STRANGER = 6666


@dataclass
class Running:
    tg: FakeTelegram
    settings: Settings
    app: BotApp
    model: ChatModel
    db: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def wait(self, predicate: Callable[[], T], within: float = 60.0) -> T:
        """Like the fake server's wait_for, with room for a machine busy with other work."""
        return await self.tg.wait_for(predicate, within)

    async def history(self, user_id: int, chat_id: int | None = None) -> list[MessageRecord]:
        """The user's current conversation, read straight from the database."""
        async with self.sessions() as session:
            conversation = await ConversationRepository(session).current(
                user_id, user_id if chat_id is None else chat_id
            )
            records = await MessageRepository(session).history(conversation.id)
            await session.commit()
            return records

    async def system_prompt(self, user_id: int) -> str | None:
        async with self.sessions() as session:
            user = await UserRepository(session).get(user_id)
            return None if user is None else user.system_prompt

    async def wait_reply(self, chat_id: int, count: int = 1, within: float = 60.0) -> None:
        """Until the bot's reply row(s) in the chat's current conversation are final and
        delivered (the ids of the Telegram messages carrying them are stored last)."""

        async def settled() -> bool:
            records = await self.history(chat_id)
            bots = [r for r in records if r.role == "bot"]
            return len(bots) >= count and all(
                r.status != "pending" and r.telegram_message_ids for r in bots
            )

        await self.wait_async(settled, within, "the reply was not stored in time")

    async def wait_async(
        self,
        predicate: Callable[[], Awaitable[bool]],
        within: float = 60.0,
        failure: str = "the awaited state did not come in time",
    ) -> None:
        """Until an async predicate (a database read, say) holds."""
        deadline = asyncio.get_running_loop().time() + within
        while not await predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(failure)
            await asyncio.sleep(0.05)


def load_model(path: Path, max_new_tokens: int = 64, parallel: int | None = 1) -> ChatModel:
    """The tiny model with greedy sampling on one thread: with two threads, llama.cpp's
    spinning thread barrier slows to a crawl when other work shares the two cores.
    One sequence unless asked: the queue tests need replies to wait for each other."""
    from sampling import GREEDY

    from models.runtime.chat_model import load_chat_model
    from models.runtime.loader import ModelConfig

    return load_chat_model(
        ModelConfig(model_path=path, n_ctx=2048, n_threads=1, seed=7),
        template="gigasaiga",
        max_new_tokens=max_new_tokens,
        sampling=GREEDY,
        parallel=parallel,
    )


def bot_settings(tg: FakeTelegram, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bot_token": tg.token,
        "telegram_api_url": tg.base_url,
        "allowed_users": [str(OWNER), "@friend_by_name"],
        "admin_users": [str(ADMIN)],
        "data_dir": data_dir,
        "stream_edit_interval": 0.3,
        "use_drafts": True,
        # The tests written before rich messages check the drafts + HTML path; the rich tests
        # turn this on.
        "use_rich_messages": False,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def running_bot(
    model: ChatModel, data_dir: Path, tg: FakeTelegram | None = None, **overrides: Any
) -> AsyncIterator[Running]:
    async with contextlib.AsyncExitStack() as stack:
        if tg is None:
            tg = await stack.enter_async_context(FakeTelegram())
        settings = bot_settings(tg, data_dir, **overrides)
        services = await stack.enter_async_context(open_services(settings, model=model))
        app = build_app(settings, services)
        stop = asyncio.Event()
        task = asyncio.create_task(serve(app, stop))
        running = Running(tg, settings, app, model, services.db, services.sessions, stop, task)
        try:
            # Updates flow once the bot polls or, in webhook mode, has set its webhook.
            ready = "setWebhook" if settings.webhook.webhook_url else "getUpdates"
            await tg.wait_for(lambda: [c for c in tg.calls(ready) if c.status == 200])
            yield running
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


def instrument(model: ChatModel, seconds_per_token: float = 0.0) -> list[Generation]:
    """Record every generation submitted (its prompt is what the model saw) and optionally make
    each token take `seconds_per_token`: the tiny model writes hundreds of tokens a second, and
    /stop or 429 tests need a reply that is still being written."""
    engine = model.engine
    original = engine.submit
    submitted: list[Generation] = []

    def sleepy(ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        import time

        time.sleep(seconds_per_token)
        return logits

    def submit(prompt: list[int], **kwargs: Any) -> Generation:
        if seconds_per_token > 0:
            kwargs.setdefault("logits_processor", sleepy)
        generation = original(prompt, **kwargs)
        submitted.append(generation)
        return generation

    engine.submit = submit  # type: ignore[method-assign]
    return submitted


def seen_prompt(model: ChatModel, generation: Generation) -> str:
    """The prompt a generation was fed, as text with its special tokens."""
    return model.tokenizer.decode(generation.prompt, special=True)


def has_text(tg: FakeTelegram, chat_id: int, text: str) -> Callable[[], bool]:
    return lambda: any(text in t for t in tg.texts(chat_id))
