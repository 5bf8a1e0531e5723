"""Moving one sequence's KV cells between the live llama.cpp context and a `KeptState`."""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np
import numpy.typing as npt

from models.runtime.context import Runtime
from models.runtime.state_file import KeptState


def capture(runtime: Runtime, seq: int) -> KeptState:
    """Copy sequence `seq`: its tokens and their KV cells, no logits."""
    size = int(llama_cpp.llama_state_seq_get_size(runtime.ctx, seq))
    data = bytearray(size)
    buffer = (ctypes.c_uint8 * size).from_buffer(data)
    written = int(llama_cpp.llama_state_seq_get_data(runtime.ctx, buffer, size, seq))
    del buffer  # releases the export, so the bytearray can shrink
    if written <= 0:
        raise RuntimeError("llama.cpp could not copy the sequence state")
    del data[written:]
    return KeptState(np.array(runtime.tokens[seq], dtype=np.intc), data)


def restore(runtime: Runtime, seq: int, state: KeptState) -> bool:
    """Replace sequence `seq` with `state`; on failure the sequence is left empty."""
    # An empty sequence puts the restored cells where a cold evaluation would have put them.
    runtime.truncate(seq, 0)
    buffer = (ctypes.c_uint8 * len(state.data)).from_buffer(state.data)
    loaded = int(llama_cpp.llama_state_seq_set_data(runtime.ctx, buffer, len(state.data), seq))
    del buffer
    if loaded == 0 or runtime.cells(seq) != len(state.tokens):
        runtime.truncate(seq, 0)
        return False
    runtime.tokens[seq] = [int(t) for t in state.tokens]
    return True


def common_prefix(kept: npt.NDArray[np.intc], prompt: npt.NDArray[np.intc]) -> int:
    n = min(len(kept), len(prompt))
    differ = np.flatnonzero(kept[:n] != prompt[:n])
    return int(differ[0]) if len(differ) else n
