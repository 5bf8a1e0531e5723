"""The composition root: everything the front ends share, opened and closed in one place.

`open_services()` opens the database, migrates it, keeps the replies a killed process left
behind, loads the model and builds the chat service; on the way out it closes them in reverse.
The Telegram bot (`python -m bot`), `domovoy chat` and the end-to-end tests all start here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.core.chat import ChatService
from bot.core.coordination import Coordination, LocalCoordination, SharedCoordination
from bot.preflight import StartupError, engine_urls, model_path
from bot.settings import Settings
from models.engines import SlotLedger
from models.errors import ModelError
from models.files.context import choose_n_ctx
from models.runtime.chat_model import ChatModel, load_chat_model
from storage.advisory import AdvisoryLocks
from storage.database import create_engine, create_session_factory, migrate
from storage.errors import StorageError
from storage.slot_ledger import PostgresSlotLedger

logger = logging.getLogger(__name__)

WAIT_POLL = 0.1  # seconds between looks whether an earlier message of a chat was answered


@dataclass(frozen=True)
class Services:
    db: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    model: ChatModel
    chat: ChatService


def load_model(settings: Settings) -> ChatModel:
    """Blocking: reads the weights. Every failure becomes one sentence for the operator."""
    path = model_path(settings)
    try:
        n_ctx = choose_n_ctx(path, settings.model.n_ctx, kv_type=settings.model.kv_type).n_ctx
        config = settings.model.to_config(path, n_ctx, settings.sampling.seed)
        return load_chat_model(
            config,
            template=settings.model.template,
            max_new_tokens=settings.model.max_new_tokens,
            sampling=settings.sampling.to_config(),
            state_cache=settings.cache.to_config(settings.storage.state_cache_dir),
            window_low_watermark=settings.model.window_low_watermark,
            parallel=settings.model.parallel,
            kv_type=settings.model.kv_type,
        )
    except ModelError as exc:
        raise StartupError(str(exc)) from exc


async def load_remote(settings: Settings, ledger: SlotLedger | None = None) -> ChatModel:
    """ENGINE=remote: the model file's vocabulary here, the replies from ENGINE_URLS.
    `ledger`: which conversation each server slot served last (default: this process's)."""
    from models.remote.loader import RemoteConfig, load_remote_model

    engine = settings.engine
    engine_urls(settings)
    path = model_path(settings)  # the same GGUF the servers run, for its vocabulary
    key = engine.engine_api_key.get_secret_value() if engine.engine_api_key else None
    config = RemoteConfig(
        model_path=path,
        urls=engine.engine_urls,
        template=settings.model.template,
        max_new_tokens=settings.model.max_new_tokens,
        api_key=key,
        api=engine.engine_api,
        model=engine.engine_model,
        n_ctx=settings.model.n_ctx,
        connect_timeout=engine.engine_connect_timeout,
        read_timeout=engine.engine_read_timeout,
        health_interval=engine.engine_health_interval,
        wait=engine.engine_wait,
        sampling=dataclasses.replace(settings.sampling.to_config(), seed=settings.sampling.seed),
        window_low_watermark=settings.model.window_low_watermark,
    )
    try:
        return await load_remote_model(config, ledger)
    except ModelError as exc:
        raise StartupError(str(exc)) from exc


async def load_any_model(settings: Settings, ledger: SlotLedger | None = None) -> ChatModel:
    """The model for ENGINE: loaded into this process, or reached on remote servers."""
    if settings.engine.engine == "remote":
        return await load_remote(settings, ledger)
    return await asyncio.to_thread(load_model, settings)


async def _open_slot_ledger(settings: Settings, db: AsyncEngine) -> PostgresSlotLedger | None:
    """Several bot processes on one PostgreSQL share the remote servers' slots: which
    conversation each slot served last is kept in the database, not in one process."""
    if settings.engine.engine != "remote" or db.dialect.name != "postgresql":
        return None
    ledger = PostgresSlotLedger(db)
    try:
        await ledger.open()
    except (SQLAlchemyError, OSError) as exc:
        raise StartupError(f"The database cannot hold this process's locks: {exc}") from exc
    return ledger


async def _open_database(settings: Settings) -> AsyncEngine:
    url = settings.storage.resolved_database_url
    shown = make_url(url).render_as_string(hide_password=True)  # errors reach the journal
    try:
        # Database errors quote their statement's parameters, users' text among them.
        db = create_engine(url, hide_parameters=not settings.log_message_text)
    except (SQLAlchemyError, StorageError, OSError) as exc:
        raise StartupError(f"The database {shown} cannot be opened: {exc}") from exc
    try:
        await migrate(db)
    except (SQLAlchemyError, StorageError, OSError) as exc:
        await db.dispose()
        raise StartupError(f"The database {shown} cannot be opened: {exc}") from exc
    return db


async def _open_coordination(
    db: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> Coordination:
    """PostgreSQL: several bot processes may share the database (advisory locks on a
    connection of this process's own). SQLite: this process only."""
    if db.dialect.name != "postgresql":
        return LocalCoordination()
    coordination = SharedCoordination(AdvisoryLocks(db), sessions, poll=WAIT_POLL)
    try:
        await coordination.open()
    except (SQLAlchemyError, OSError) as exc:
        raise StartupError(f"The database cannot hold this process's locks: {exc}") from exc
    return coordination


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, *, model: ChatModel | None = None, log_text: bool | None = None
) -> AsyncIterator[Services]:
    """`model`: an already loaded model, which the caller keeps and closes (tests share one)."""
    db = await _open_database(settings)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(db.dispose)
        if model is None:
            ledger = await _open_slot_ledger(settings, db)
            if ledger is not None:
                stack.push_async_callback(ledger.close)
            logger.info("Loading the model %s", settings.model.model_path)
            model = await load_any_model(settings, ledger)
            stack.push_async_callback(model.close)
        sessions = create_session_factory(db)
        coordination = await _open_coordination(db, sessions)
        stack.push_async_callback(coordination.close)
        chat = ChatService(
            model,
            system_prompt=settings.model.system_prompt,
            log_text=settings.log_message_text if log_text is None else log_text,
            coordination=coordination,
        )
        if not coordination.shared:  # with several, the sweep shows them in their chats
            async with sessions() as session:
                await chat.keep_interrupted_replies(session)
        yield Services(db, sessions, model, chat)
