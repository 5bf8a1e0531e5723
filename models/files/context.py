"""The context window (N_CTX) used when none is set: the model's trained context, capped by RAM.

A model trained on 32k or 128k tokens should get that much room when the machine can hold it,
and no model gets more than it was trained with (GPT-2 models abort in C past it). The KV cache
grows with N_CTX; it may take half of what is left of the RAM after the model file and the
runtime's own needs, leaving the other half to the system, the kept conversation states and
the bot. The figure is rounded down to a multiple of 256 and never below 512.

The trained context is what the file's header says, unless the file is a model the registry
knows (`registry.entry_for_file`) and the registry's figure is smaller: some derived GGUFs
declare more than the model was trained on (Mistral-Nemo ones 1,024,000 for a 128k model).
The KV cache is counted in KV_TYPE: q8_0 keeps 34 bytes per 32 values where f16 keeps 64.

The loader calls `choose_n_ctx(model_path, settings.n_ctx, kv_type=...).n_ctx` and passes the
result as `ModelConfig.n_ctx`; an explicit N_CTX is kept, only capped at the trained context.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from models.errors import ModelLoadError
from models.files.gguf_info import read_gguf_info
from models.files.registry import RUNTIME_OVERHEAD, entry_for_file, human_size, total_ram

logger = logging.getLogger(__name__)

RAM_SHARE = 0.8  # of the machine's RAM that the bot process may plan for
KV_SHARE = 0.5  # of what is left after the model that the KV cache may take
STEP = 256
MIN_CTX = 512
# Bytes per cached value relative to f16 (llama.cpp's q8_0 block: 32 values in 34 bytes).
KV_TYPE_SCALE = {"f16": (1, 1), "q8_0": (17, 32)}


def kv_bytes_for_type(f16_bytes: int, kv_type: str) -> int:
    num, den = KV_TYPE_SCALE.get(kv_type, (1, 1))
    return f16_bytes * num // den


def ram_limit(file_size: int, kv_bytes_per_token: int, ram: int) -> int:
    """The most tokens whose KV cache fits the RAM share beside a model file of `file_size`."""
    if kv_bytes_per_token <= 0:
        return 0
    spare = int(ram * RAM_SHARE) - file_size - RUNTIME_OVERHEAD
    return max(0, int(spare * KV_SHARE) // kv_bytes_per_token)


def auto_n_ctx(trained: int, file_size: int, kv_bytes_per_token: int, ram: int) -> int:
    """min(trained context, RAM limit), the limit rounded down to a multiple of 256, >= 512."""
    if kv_bytes_per_token <= 0:
        return trained  # nothing to weigh it against
    limit = ram_limit(file_size, kv_bytes_per_token, ram)
    if limit >= trained:
        return trained
    return min(trained, max(MIN_CTX, limit // STEP * STEP))


@dataclass(frozen=True)
class ContextChoice:
    trained: int
    ram_limit: int  # 0 when the KV cache size is unknown
    n_ctx: int
    requested: int | None
    kv_bytes_per_token: int  # in `kv_type`
    kv_type: str = "f16"
    header_context: int = 0  # what the file declares; 0 when it is the trained context itself
    registry_name: str = ""  # the registry entry whose context capped the file's

    def trained_line(self) -> str:
        if self.header_context > self.trained:
            return (
                f"{self.trained} tokens (registry entry {self.registry_name}; the file declares "
                f"{self.header_context})"
            )
        return f"{self.trained} tokens (the model file)"

    def describe(self) -> str:
        if self.requested is not None:
            how = f"N_CTX={self.requested}" + (
                f", capped at the trained {self.trained}" if self.n_ctx < self.requested else ""
            )
        elif self.ram_limit and self.ram_limit < self.trained:
            how = "the RAM limit"
        elif self.registry_name:
            how = f"the trained context, as registry entry {self.registry_name} has it"
        else:
            how = "the trained context"
        kv = (
            f"KV cache {human_size(self.kv_bytes_per_token * self.n_ctx)} {self.kv_type}"
            if self.kv_bytes_per_token
            else "KV cache size unknown"
        )
        return f"{self.n_ctx} tokens ({how}; {kv})"


def choose_n_ctx(
    path: Path, requested: int | None, *, ram: int | None = None, kv_type: str = "f16"
) -> ContextChoice:
    """The context to load `path` with: `requested` capped at the trained context, or when
    None the trained context capped by this machine's RAM, the KV cache counted in `kv_type`."""
    info = read_gguf_info(path)
    header = int(info.context_length or 0)
    if header <= 0:
        raise ModelLoadError(f"The model file {path} does not say its context length.")
    entry = entry_for_file(path, info.name)
    trained, capped_by = header, ""
    if entry is not None and 0 < entry.context_length < header:
        trained, capped_by = entry.context_length, entry.name
    kv_bytes = kv_bytes_for_type(info.kv_bytes_per_token, kv_type)
    ram = total_ram() if ram is None else ram
    limit = ram_limit(info.file_size, kv_bytes, ram)
    if requested is not None:
        n_ctx = min(requested, trained)
    else:
        n_ctx = auto_n_ctx(trained, info.file_size, kv_bytes, ram)
    choice = ContextChoice(
        trained,
        limit,
        n_ctx,
        requested,
        kv_bytes,
        kv_type,
        header if capped_by else 0,
        capped_by,
    )
    logger.info("Context for %s: %s", path.name, choice.describe())
    return choice
