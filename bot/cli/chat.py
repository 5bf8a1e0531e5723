"""`domovoy chat`: try the model in the terminal, with the bot's history and commands."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Annotated

import typer

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

    settings = Settings()
    if model is not None:
        settings = settings.model_copy(update={"model_path": model})
    level = "WARNING" if settings.log_level.upper() == "INFO" else settings.log_level
    setup_logging(level, log_message_text=settings.log_message_text)
    try:
        model_path(settings)
        asyncio.run(_chat(settings, english=os.environ.get("LANG", "").startswith("en")))
    except StartupError as exc:
        typer.echo(f"domovoy: {exc}", err=True)
        raise typer.Exit(2) from None


async def _chat(settings: Settings, *, english: bool) -> None:
    import asyncio

    from bot.core.chat import ChatService
    from bot.core.console import Console
    from bot.telegram.app import load_model
    from bot.telegram.texts import EN, RU
    from storage.database import create_engine, create_session_factory, migrate

    db = create_engine(settings.resolved_database_url)
    try:
        await migrate(db)
        chat_model = await asyncio.to_thread(load_model, settings)
        try:
            service = ChatService(chat_model, system_prompt=settings.system_prompt, log_text=False)
            # Bytes that are not UTF-8 are kept (as lone surrogates, which the storage takes)
            # rather than ending the chat, and shown back as "?".
            for stream, errors in ((sys.stdin, "surrogateescape"), (sys.stdout, "replace")):
                if isinstance(stream, io.TextIOWrapper):
                    stream.reconfigure(errors=errors)
            console = Console(
                service, create_session_factory(db), EN if english else RU, sys.stdout
            )
            await console.run()
        finally:
            await chat_model.close()
    finally:
        await db.dispose()
