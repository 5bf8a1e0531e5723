"""`domovoy models convert-lora` and `convert-ggml`: make published ruGPT-3.5 files loadable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bot.cli.common import fail


def convert_lora_cmd(
    adapter_dir: Annotated[
        Path, typer.Argument(help="PEFT adapter folder (adapter_config.json and weights).")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="LoRA GGUF file to write.")],
) -> None:
    """Convert a PEFT LoRA adapter of a GPT-2-architecture model to a llama.cpp LoRA GGUF."""
    from models.convert.lora import convert_lora
    from models.errors import ModelError

    try:
        convert_lora(adapter_dir, output)
    except ModelError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"Wrote {output}. Use it with the base model GGUF:")
    typer.echo(f"LORA_PATH={output.resolve()}")


def convert_ggml_cmd(
    source: Annotated[Path, typer.Argument(help="GGML or GGJT v3 .bin file of a GPT-2 model.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="GGUF file to write.")],
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer", help="The model's tokenizer.json; default: fetched from the hub."
        ),
    ] = None,
) -> None:
    """Convert an old GGML/GGJT GPT-2 model (as llm-rs wrote ruGPT-3.5) to GGUF."""
    from models.convert.ggml import convert_ggml
    from models.errors import ModelError

    try:
        convert_ggml(source, output, tokenizer)
    except ModelError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"Wrote {output}; the rugpt35 chat template is embedded.")
    typer.echo(f"MODEL_PATH={output.resolve()}")
