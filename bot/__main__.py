"""`python -m bot`: the single entry point that builds and runs the Telegram bot."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from bot.settings import Settings

EXIT_CONFIG = 2
logger = logging.getLogger(__name__)


async def _keep_interrupted_replies(session_factory: async_sessionmaker[AsyncSession]) -> None:
    """Replies a killed process left `pending` are kept as `partial`, with their saved text."""
    from storage.repositories import MessageRepository

    async with session_factory() as session:
        count = await MessageRepository(session).mark_pending_as_partial()
        await session.commit()
    if count:
        logger.warning("Kept %d interrupted replies from the last run as partial", count)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Build everything from the settings (database, model, Bot, Dispatcher) and serve until
    `stop` is set."""
    from sqlalchemy.exc import SQLAlchemyError

    from bot.preflight import StartupError
    from bot.telegram.app import build_app, load_model, serve
    from storage.database import create_engine, create_session_factory, migrate
    from storage.errors import StorageError

    url = settings.resolved_database_url
    try:
        # Database errors quote their statement's parameters, users' text among them.
        db = create_engine(url, hide_parameters=not settings.log_message_text)
    except (SQLAlchemyError, StorageError, OSError) as exc:
        raise StartupError(f"The database {url} cannot be opened: {exc}") from exc
    try:
        sessions = create_session_factory(db)
        try:
            await migrate(db)
            await _keep_interrupted_replies(sessions)
        except (SQLAlchemyError, StorageError, OSError) as exc:
            raise StartupError(f"The database {url} cannot be opened: {exc}") from exc
        logger.info("Loading the model %s", settings.model_path)
        model = await asyncio.to_thread(load_model, settings)
        try:
            if stop.is_set():
                return
            app = build_app(settings, model=model, session_factory=sessions)
            await serve(app, stop)
        finally:
            await model.close()
    finally:
        await db.dispose()


async def _main() -> None:
    from bot import preflight
    from bot.logs import setup_logging
    from bot.settings import Settings

    settings = Settings()
    setup_logging(settings.log_level, log_message_text=settings.log_message_text)
    # Cheap checks before the slow imports: a missing token must not wait for the model.
    preflight.check(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run(settings, stop)


def main() -> int:
    from pydantic import ValidationError

    from bot.preflight import StartupError

    try:
        asyncio.run(_main())
    except StartupError as exc:
        print(f"domovoy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        print(f"domovoy: invalid settings: {problems}.", file=sys.stderr)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
