"""The `domovoy` command: one Typer app, one module per command group.

Each command module keeps its heavy imports (llama.cpp, SQLAlchemy, aiogram) inside the
command body, so `domovoy --help` answers at once.
"""

from __future__ import annotations

import typer

from bot.cli import bench, chat, convert, models, prompt, run

app = typer.Typer(
    name="domovoy",
    help="Domovoy: a self-hosted Telegram assistant backed by a local GGUF model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Find, download, inspect and convert models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

app.command("prompt")(prompt.prompt)
app.command("bench")(bench.bench)
app.command("run")(run.run)
app.command("chat")(chat.chat)
models_app.command("list")(models.list_models)
models_app.command("download")(models.download)
models_app.command("info")(models.info)
models_app.command("convert-lora")(convert.convert_lora_cmd)
models_app.command("convert-ggml")(convert.convert_ggml_cmd)


def main() -> None:
    app()
