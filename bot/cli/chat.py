"""`domovoy chat`: try the model in the terminal, with the bot's history and commands."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bot.cli.common import load_settings

if TYPE_CHECKING:
    from bot.settings import Settings


def chat(
    model: Annotated[Path | None, typer.Option(help="GGUF model file; default MODEL_PATH.")] = None,
) -> None:
    """Chat with the model as a local user: replies stream as they are written.

    /reset starts a new conversation, /system shows or sets the system prompt, /stop (or
    Ctrl-C) stops a reply, /quit (or Ctrl-D) leaves. History is kept in the bot's database.
    """
    import asyncio
    import os

    from bot.logs import setup_logging
    from bot.preflight import StartupError, model_path

    settings = load_settings()
    if model is not None:
        settings.model.model_path = model
    level = "WARNING" if settings.log_level.upper() == "INFO" else settings.log_level
    setup_logging(level, log_message_text=settings.log_message_text)
    try:
        model_path(settings)
        asyncio.run(_chat(settings, english=os.environ.get("LANG", "").startswith("en")))
    except StartupError as exc:
        typer.echo(f"domovoy: {exc}", err=True)
        raise typer.Exit(2) from None


async def _chat(settings: Settings, *, english: bool) -> None:
    from bot.core.console import Console
    from bot.lifecycle import open_services
    from bot.telegram.texts import EN, RU

    # Bytes that are not UTF-8 are kept (as lone surrogates, which the storage takes) rather
    # than ending the chat, and shown back as "?".
    for stream, errors in ((sys.stdin, "surrogateescape"), (sys.stdout, "replace")):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=errors)
    # The terminal shows what is typed; the log needs no copy of it.
    async with open_services(settings, log_text=False) as services:
        console = Console(services.chat, services.sessions, EN if english else RU, sys.stdout)
        await console.run()
