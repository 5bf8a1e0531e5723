"""`domovoy models list|download|info`: find a model that fits, fetch it, look inside a GGUF."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bot.cli.common import fail, load_settings

if TYPE_CHECKING:
    from models.files.registry import ModelEntry


def _entry_header(entry: ModelEntry) -> list[str]:
    flag = " (default)" if entry.default else ""
    kind = f"LoRA for {entry.base}" if entry.kind == "lora" else "GGUF"
    tested = (
        f"family tested on a stand-in ({entry.family})"
        if entry.family
        else "family not tested on a stand-in"
    )
    return [
        f"{entry.name}{flag}  {entry.repo}",
        f"  {kind}, template {entry.template}, trained context {entry.context_length}; {tested}.",
        f"  {entry.notes}",
    ]


def list_models() -> None:
    """The known models, their quantizations with sizes, and which fit this machine's RAM."""
    from models.errors import HubError, HubUnreachable
    from models.files.context import auto_n_ctx
    from models.files.hub import (
        check_reachable,
        list_repo,
        resolve_endpoint,
    )
    from models.files.registry import (
        REGISTRY,
        RUNTIME_OVERHEAD,
        human_size,
        ram_estimate,
        total_ram,
    )

    settings = load_settings()
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    endpoint = resolve_endpoint()
    ram = total_ram()
    offline: str | None = None
    try:
        check_reachable(endpoint)
    except HubUnreachable as exc:
        offline = str(exc)

    context = (
        f"N_CTX={settings.model.n_ctx}"
        if settings.model.n_ctx is not None
        else "the default N_CTX (trained context capped by RAM)"
    )
    typer.echo(
        f"RAM estimate = file size + KV cache for {context} + "
        f"{human_size(RUNTIME_OVERHEAD)}; this machine has {human_size(ram)} of RAM."
    )
    if offline:
        typer.echo(f"Sizes unknown: {offline}")
    for entry in REGISTRY:
        typer.echo("")
        for line in _entry_header(entry):
            typer.echo(line)
        if offline:
            typer.echo("  quantizations and sizes unknown (hub unreachable)")
            continue
        try:
            listing = list_repo(entry, endpoint=endpoint, token=token)
        except HubError as exc:
            typer.echo(f"  listing failed: {exc}")
            continue
        if listing.adapter is not None:
            typer.echo(
                f"  adapter files: {', '.join(listing.adapter.paths)} "
                f"({human_size(listing.adapter.size)})"
            )
            continue
        if not listing.quants:
            typer.echo("  no GGUF files found in the repository")
        for quant in listing.quants:
            need = ram_estimate(entry, quant.size, settings.model.n_ctx)
            mark = "fits" if need <= ram else "too big for this RAM"
            tokens = settings.model.n_ctx or auto_n_ctx(
                entry.context_length, quant.size, entry.kv_bytes_per_token, ram
            )
            typer.echo(
                f"  {quant.quant:<8} {human_size(quant.size):>10}   "
                f"RAM ~{human_size(need):>10} at N_CTX {min(tokens, entry.context_length)}"
                f"   {mark}"
            )


def download(
    name: Annotated[str, typer.Argument(help="A name from `domovoy models list`, or owner/repo.")],
    quant: Annotated[str, typer.Option(help="Quantization, e.g. Q4_K_M, Q5_K_M, Q8_0.")] = "Q4_K_M",
) -> None:
    """Download a model (a LoRA also fetches its base) into DATA_DIR/models."""
    from models.errors import ModelError
    from models.files.hub import download as hub_download

    settings = load_settings()
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    try:
        result = hub_download(
            name,
            quant,
            models_dir=settings.storage.models_dir,
            n_ctx=settings.model.n_ctx,
            token=token,
        )
    except ModelError as exc:
        raise fail(str(exc)) from None
    for warning in result.warnings:
        typer.echo(f"Warning: {warning}", err=True)
    typer.echo(
        "Done. Put these lines into the configuration (/etc/domovoy/domovoy.env or .env):", err=True
    )
    typer.echo(f"MODEL_PATH={result.model_path}")
    typer.echo(f"LORA_PATH={result.lora_path or ''}")
    typer.echo(f"TEMPLATE={result.template}")


def info(
    path: Annotated[Path, typer.Argument(help="A GGUF file.")],
) -> None:
    """Read a GGUF header: architecture, context, parameters, quantization, template."""
    from models.errors import ModelError
    from models.files.context import choose_n_ctx
    from models.files.gguf_info import read_gguf_info

    try:
        facts = read_gguf_info(path)
    except ModelError as exc:
        raise fail(str(exc)) from None
    lines = facts.lines()
    try:
        model_settings = load_settings().model
        choice = choose_n_ctx(path, model_settings.n_ctx, kv_type=model_settings.kv_type)
    except ModelError:
        choice = None  # no context length in the header: the lines already say "unknown"
    if choice is not None:
        where = next(i for i, line in enumerate(lines) if line.startswith("KV cache:"))
        limit = f"{choice.ram_limit} tokens" if choice.ram_limit else "unknown"
        lines[where + 1 : where + 1] = [
            f"trained limit:   {choice.trained_line()}",
            f"RAM limit:       {limit} of context on this machine",
            f"N_CTX here:      {choice.describe()}",
        ]
    for line in lines:
        typer.echo(line)
