"""`python -m bot`: the single entry point that builds and runs the Telegram bot."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.settings import Settings

EXIT_CONFIG = 2


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Build everything from the settings (database, model, Bot, Dispatcher) and serve until
    `stop` is set."""
    from bot.lifecycle import open_services
    from bot.telegram.app import build_app, serve

    async with open_services(settings) as services:
        if stop.is_set():
            return
        await serve(build_app(settings, services), stop)


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
    from bot.preflight import StartupError, describe_invalid_settings

    try:
        asyncio.run(_main())
    except StartupError as exc:
        print(f"domovoy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:
        if (problems := describe_invalid_settings(exc)) is None:
            raise
        print(f"domovoy: invalid settings: {problems}.", file=sys.stderr)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
