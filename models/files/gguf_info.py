"""What a GGUF file is, read from its header with the `gguf` package.

`gguf.GGUFReader` memory-maps the file and parses only the key/value header and the tensor
table; the weights are never read, so this is instant even for a 10 GB model.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
# Pre-GGUF containers (llm-rs / old llama.cpp); current llama.cpp cannot read them.
OLD_GGML_MAGICS = {b"lmgg", b"tjgg", b"fmgg", b"ggml", b"ggjt", b"ggmf"}


def check_gguf(path: Path, *, what: str = "model") -> None:
    """Fail early, with a sentence, for files llama.cpp would reject less helpfully."""
    if not path.exists():
        raise ModelLoadError(
            f"The {what} file {path} does not exist; check the path in the settings."
        )
    if not path.is_file():
        raise ModelLoadError(f"The {what} path {path} is not a file.")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"The {what} file {path} is not readable by this user.")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic[::-1] in OLD_GGML_MAGICS or magic in OLD_GGML_MAGICS:
        raise ModelLoadError(
            f"The {what} file {path} is in the old GGML format, which llama.cpp no longer "
            "reads; it needs converting to GGUF first."
        )
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"The {what} file {path} is not a GGUF file.")


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    file_size: int
    architecture: str
    name: str | None
    context_length: int | None
    parameter_count: int
    quantization: str
    tokenizer_model: str | None
    vocab_size: int | None
    chat_template: str | None
    kv_bytes_per_token: int = 0  # f16 K and V cache per token of context; 0 when unknown

    def lines(self) -> list[str]:
        def or_unknown(value: object) -> str:
            return "unknown" if value is None else str(value)

        lines = [
            f"file:            {self.path}",
            f"file size:       {self.file_size:,} bytes",
            f"name:            {or_unknown(self.name)}",
            f"architecture:    {self.architecture}",
            f"context length:  {or_unknown(self.context_length)} (trained)",
            "KV cache:        "
            + (
                f"{self.kv_bytes_per_token:,} bytes per token (f16)"
                if self.kv_bytes_per_token
                else "unknown"
            ),
            f"parameters:      {self.parameter_count:,} ({_short_count(self.parameter_count)})",
            f"quantization:    {self.quantization}",
            f"tokenizer:       {or_unknown(self.tokenizer_model)}",
            f"vocabulary size: {or_unknown(self.vocab_size)}",
        ]
        if self.chat_template:
            lines.append("chat template:")
            lines.extend("    " + line for line in self.chat_template.splitlines())
        else:
            lines.append("chat template:   none embedded")
        return lines


def _short_count(count: int) -> str:
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None or not field.types:
        return None
    return field.contents()


def _quantization(reader: Any, file_type: Any) -> str:
    import gguf

    if file_type is not None:
        try:
            name = gguf.LlamaFileType(int(file_type)).name
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    # No (or an unknown) general.file_type: name the type holding most of the weights.
    by_type: Counter[str] = Counter()
    for tensor in reader.tensors:
        by_type[tensor.tensor_type.name] += int(tensor.n_elements)
    if not by_type:
        return "unknown"
    return f"{by_type.most_common(1)[0][0]} (guessed from tensor types)"


def _number(reader: Any, key: str) -> int:
    value = _field(reader, key)
    if isinstance(value, list):  # per-layer values (head_count_kv of some models): the widest
        value = max(value, default=0)
    return int(value) if isinstance(value, int | float) else 0


def kv_bytes_per_token(reader: Any, architecture: str) -> int:
    """f16 KV cache per token, from the header; 0 when the header does not say enough."""
    arch = architecture
    n_layer = _number(reader, f"{arch}.block_count")
    kv_lora = _number(reader, f"{arch}.attention.kv_lora_rank")
    if kv_lora and _number(reader, f"{arch}.attention.key_length_mla"):
        # DeepSeek-style MLA: one compressed latent plus the rope part, shared by K and V.
        return 2 * n_layer * (kv_lora + _number(reader, f"{arch}.rope.dimension_count"))
    n_embd = _number(reader, f"{arch}.embedding_length")
    n_head = _number(reader, f"{arch}.attention.head_count")
    n_head_kv = _number(reader, f"{arch}.attention.head_count_kv") or n_head
    if not (n_layer and n_head):
        return 0
    k = _number(reader, f"{arch}.attention.key_length") or n_embd // n_head
    v = _number(reader, f"{arch}.attention.value_length") or n_embd // n_head
    return 2 * n_layer * n_head_kv * (k + v)


def read_gguf_info(path: Path) -> GGUFInfo:
    """The header facts of a GGUF file; a missing or malformed file raises ModelLoadError."""
    import gguf

    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist or is not a file.")
    try:
        reader = gguf.GGUFReader(path)
        architecture = _field(reader, "general.architecture")
        if not architecture:
            raise ValueError("no general.architecture key")
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        info = GGUFInfo(
            path=path,
            file_size=path.stat().st_size,
            architecture=str(architecture),
            name=_field(reader, "general.name"),
            context_length=_field(reader, f"{architecture}.context_length"),
            parameter_count=sum(int(t.n_elements) for t in reader.tensors),
            quantization=_quantization(reader, _field(reader, "general.file_type")),
            tokenizer_model=_field(reader, "tokenizer.ggml.model"),
            vocab_size=len(tokens.data) if tokens is not None else None,
            chat_template=_field(reader, "tokenizer.chat_template"),
            kv_bytes_per_token=kv_bytes_per_token(reader, str(architecture)),
        )
    except ModelLoadError:
        raise
    except Exception as exc:  # the reader raises ValueError, IndexError, struct errors, ...
        raise ModelLoadError(f"{path} is not a valid GGUF file ({exc}).") from exc
    return info
