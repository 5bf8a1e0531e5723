"""`domovoy run`: start the Telegram bot, exactly as `python -m bot` does."""

from __future__ import annotations

import typer


def run() -> None:
    """Start the Telegram bot (long polling) with the settings from the environment or .env."""
    from bot.__main__ import main

    code = main()
    if code:
        raise typer.Exit(code)
