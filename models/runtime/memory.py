"""How much RAM the KV cache of `PARALLEL` sequences takes, and which `PARALLEL` fits."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from models.errors import ModelLoadError

logger = logging.getLogger(__name__)

# Bytes per cached K or V element: f16 is two bytes, q8_0 stores 32 values in 34 bytes.
KV_TYPES = {"f16": 2.0, "q8_0": 34 / 32}
MAX_DEFAULT_PARALLEL = 4
# Compute buffers, logits, the tokenizer and Python itself: not part of weights or KV.
OVERHEAD_BYTES = 256 * 2**20
# A default leaves this share of the free RAM to the rest of the system.
DEFAULT_SHARE = 0.8


@dataclass(frozen=True)
class KvShape:
    n_layer: int
    n_embd_k: int  # per token and layer, all KV heads together
    n_embd_v: int

    def bytes(self, n_ctx: int, parallel: int, kv_type: str) -> int:
        per_token = self.n_layer * (self.n_embd_k + self.n_embd_v) * KV_TYPES[kv_type]
        return int(per_token * n_ctx * parallel)


def available_ram() -> int:
    """MemAvailable from /proc/meminfo; total physical RAM where that file is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def choose_parallel(
    requested: int | None,
    *,
    shape: KvShape,
    n_ctx: int,
    kv_type: str,
    model_bytes: int,
    ram: int,
    limit: int,
) -> int:
    """`requested` when it fits in `ram`, else ModelLoadError naming the largest that does;
    None picks up to MAX_DEFAULT_PARALLEL within DEFAULT_SHARE of the RAM."""

    def need(parallel: int) -> int:
        return model_bytes + shape.bytes(n_ctx, parallel, kv_type) + OVERHEAD_BYTES

    if requested is None:
        room = int(ram * DEFAULT_SHARE)
        fits = [p for p in range(1, min(MAX_DEFAULT_PARALLEL, limit) + 1) if need(p) <= room]
        return max(fits, default=1)
    if requested < 1:
        raise ModelLoadError(f"PARALLEL must be at least 1, not {requested}.")
    if requested > limit:
        raise ModelLoadError(f"PARALLEL={requested} is more than llama.cpp allows ({limit}).")
    if requested > 1 and need(requested) > ram:
        largest = max((p for p in range(1, requested) if need(p) <= ram), default=0)
        raise ModelLoadError(
            f"PARALLEL={requested} needs {gib(need(requested))} of RAM for the model and the "
            f"KV cache ({kv_type}, N_CTX {n_ctx}) but {gib(ram)} is free; "
            + (
                f"the largest PARALLEL that fits is {largest}."
                if largest
                else "not even one sequence fits."
            )
        )
    if need(requested) > ram:
        logger.warning("The model and its KV cache need %s but %s is free", gib(need(1)), gib(ram))
    return requested
