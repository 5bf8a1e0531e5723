"""`python -m bot`: the single entry point that builds and runs the Telegram bot."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

EXIT_CONFIG = 2


def setup_logging(level: str) -> None:
    # One line per record on stderr: journald keeps it readable and adds the time itself.
    logging.basicConfig(
        level=level.upper(),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # aiogram logs every handled update at INFO: noise in the journal.
    logging.getLogger("aiogram.event").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


async def _main() -> None:
    from bot import preflight
    from bot.settings import Settings

    settings = Settings()
    setup_logging(settings.log_level)
    preflight.check(settings)  # before the slow imports: a missing token answers at once
    from bot.app import run

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
