"""Moving one sequence's KV cells between a live llama.cpp context and a `KeptState`."""

from __future__ import annotations

import ctypes
from typing import Any, Protocol

import llama_cpp
import numpy as np
import numpy.typing as npt

from models.runtime.state_file import KeptState


class _Context(Protocol):
    n_tokens: int
    input_ids: npt.NDArray[np.intc]

    @property
    def ctx(self) -> Any: ...


def capture(llama: _Context) -> KeptState:
    """Copy the live context's sequence: its tokens and their KV cells, no logits."""
    n_tokens = llama.n_tokens
    memory = llama_cpp.llama_get_memory(llama.ctx)
    # Cells past n_tokens can linger after a cancelled prompt; they are not part of the state.
    llama_cpp.llama_memory_seq_rm(memory, 0, n_tokens, -1)
    size = int(llama_cpp.llama_state_seq_get_size(llama.ctx, 0))
    data = bytearray(size)
    buffer = (ctypes.c_uint8 * size).from_buffer(data)
    written = int(llama_cpp.llama_state_seq_get_data(llama.ctx, buffer, size, 0))
    del buffer  # releases the export, so the bytearray can shrink
    if written <= 0:
        raise RuntimeError("llama.cpp could not copy the sequence state")
    del data[written:]
    return KeptState(np.array(llama.input_ids[:n_tokens], dtype=np.intc), data)


def restore(llama: _Context, state: KeptState) -> bool:
    """Replace the live context with `state`; on failure the context is left empty."""
    memory = llama_cpp.llama_get_memory(llama.ctx)
    # An empty cache puts the restored cells where a cold evaluation would have put them.
    llama_cpp.llama_memory_clear(memory, True)
    buffer = (ctypes.c_uint8 * len(state.data)).from_buffer(state.data)
    loaded = int(llama_cpp.llama_state_seq_set_data(llama.ctx, buffer, len(state.data), 0))
    del buffer
    if loaded == 0:
        llama_cpp.llama_memory_clear(memory, True)
        llama.n_tokens = 0
        return False
    n_tokens = len(state.tokens)
    llama.input_ids[:n_tokens] = state.tokens
    llama.n_tokens = n_tokens
    return True


def scrub(llama: _Context) -> None:
    """Empty the live context, KV cells and token ids alike."""
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llama.ctx), True)
    llama.input_ids[:] = 0
    llama.n_tokens = 0


def common_prefix(kept: npt.NDArray[np.intc], prompt: npt.NDArray[np.intc]) -> int:
    n = min(len(kept), len(prompt))
    differ = np.flatnonzero(kept[:n] != prompt[:n])
    return int(differ[0]) if len(differ) else n
