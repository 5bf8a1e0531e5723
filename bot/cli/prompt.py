"""`domovoy prompt`: show the exact prompt the bot would feed the model for a conversation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer


def _read_conversation(raw: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"standard input is not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if not isinstance(data, list) or not data:
        raise ValueError('expected a non-empty JSON list of {"role": ..., "content": ...}')
    for index, item in enumerate(data):
        if (
            not isinstance(item, dict)
            or item.get("role") not in ("user", "bot")
            or not isinstance(item.get("content"), str)
        ):
            raise ValueError(
                f'message {index} must be {{"role": "user" or "bot", "content": "text"}}'
            )
    if data[-1]["role"] != "user":
        raise ValueError("the last message must be the user's new message")
    return data


def prompt(
    model: Annotated[
        Path | None,
        typer.Option(help="GGUF file (only its vocabulary is loaded); default MODEL_PATH."),
    ] = None,
    template: Annotated[str | None, typer.Option(help="Template name; default TEMPLATE.")] = None,
    system: Annotated[
        str | None,
        typer.Option(help='System prompt; default SYSTEM_PROMPT or the template\'s; "" for none.'),
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Reply reserve.")] = None,
    n_ctx: Annotated[int | None, typer.Option(min=64, help="Context size.")] = None,
    ids: Annotated[bool, typer.Option("--ids", help="Print token ids, one per line.")] = False,
) -> None:
    """Read a conversation as JSON on stdin and print the prompt that would be fed.

    The JSON is a list of {"role": "user"|"bot", "content": "..."}; the last one is the user's
    new message. Token count, budget and dropped turns go to stderr.
    """
    from bot.settings import Settings
    from models.errors import ModelError
    from models.files.context import choose_n_ctx
    from models.prompt.templates import ChatMessage, get_template
    from models.prompt.tokenizer import LlamaTokenizer
    from models.prompt.window import Window

    settings = Settings()
    model_path = model or settings.model.model_path
    if model_path is None:
        typer.echo("Set MODEL_PATH or pass --model with the GGUF file.", err=True)
        raise typer.Exit(2)
    try:
        conversation = _read_conversation(sys.stdin.read())
        tokenizer = LlamaTokenizer.from_file(model_path)
        chat_template = get_template(template or settings.model.template, tokenizer)
        context = choose_n_ctx(
            model_path, n_ctx or settings.model.n_ctx, kv_type=settings.model.kv_type
        ).n_ctx
        window = Window(
            chat_template,
            tokenizer,
            n_ctx=context,
            reserve=max_new_tokens or settings.model.max_new_tokens,
            low_watermark=settings.model.window_low_watermark,
        )
        if system is None:
            system = settings.model.system_prompt or chat_template.default_system_prompt
        history = [ChatMessage(item["role"], item["content"]) for item in conversation]
        result = window.fit(system or None, history)
    except (ValueError, ModelError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None

    if ids:
        typer.echo("\n".join(str(token) for token in result.tokens))
    else:
        sys.stdout.write(tokenizer.decode(result.tokens, special=True))
        # A prompt may end in its own newline (chatml): only a terminal gets one more, so
        # that piped output is byte for byte what the model is fed.
        if sys.stdout.isatty():
            sys.stdout.write("\n")
    typer.echo(
        f"tokens: {result.n_prompt}, budget: {result.budget} "
        f"(n_ctx {result.n_ctx} - reserve {result.reserve}), "
        f"dropped turns: {result.dropped_turns} ({result.dropped_messages} messages)"
        + (", newest message truncated" if result.truncated_last else ""),
        err=True,
    )
