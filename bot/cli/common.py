"""What every `domovoy` command shares: one-sentence failures and the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from bot.settings import Settings


def fail(message: str) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(1)


def load_settings() -> Settings:
    """The settings, or one sentence naming the bad ones (a typo in .env is no traceback)."""
    from bot.preflight import describe_invalid_settings
    from bot.settings import Settings

    try:
        return Settings()
    except Exception as exc:
        if (problems := describe_invalid_settings(exc)) is None:
            raise
        raise fail(f"invalid settings: {problems}.") from None
