"""One llama.cpp context holding several sequences, through llama-cpp-python's low-level API.

The KV cache is split per sequence (`kv_unified` off): each of the `parallel` sequences has
`n_ctx` cells of its own and its own positions from 0, so the window and a GPT-2 model's
position limit hold per conversation, and one sequence can never run out of room because of
another.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp import _internals as internals

from models.errors import ModelLoadError
from models.files.gguf_info import check_gguf
from models.runtime.loader import ModelConfig, check_lora
from models.runtime.memory import KV_TYPES, KvShape, available_ram, choose_parallel, gib

logger = logging.getLogger(__name__)

GGML_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}


class DecodeError(RuntimeError):
    """llama_decode failed; `code` is its return value (1: no KV slot, 2: aborted)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"llama_decode returned {code}")
        self.code = code


@dataclass(frozen=True)
class Entry:
    """One token of a batch: which sequence, at which position, and whether to keep logits."""

    seq: int
    token: int
    pos: int
    logits: bool


class Context:
    """The context pointer and its decode call; tests wrap `decode` to act mid-batch."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def decode(self, batch: llama_cpp.llama_batch) -> None:
        code = int(llama_cpp.llama_decode(self.ctx, batch))
        if code != 0:
            raise DecodeError(code)


class Runtime:
    def __init__(
        self, config: ModelConfig, *, parallel: int | None = None, kv_type: str = "f16"
    ) -> None:
        if kv_type not in KV_TYPES:
            raise ModelLoadError(f"KV_TYPE must be one of {', '.join(KV_TYPES)}, not {kv_type!r}.")
        check_gguf(config.model_path)
        if config.lora_path is not None:
            check_lora(config.model_path, config.lora_path)
        self.config = config
        self.kv_type = kv_type
        self.n_ctx = config.n_ctx
        self._stack = contextlib.ExitStack()
        try:
            self._open(config, parallel, kv_type)
        except BaseException:
            self._stack.close()
            raise

    def _open(self, config: ModelConfig, parallel: int | None, kv_type: str) -> None:
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = config.n_gpu_layers
        mparams.use_mmap = True
        mparams.use_mlock = config.use_mlock
        try:
            self.model = internals.LlamaModel(
                path_model=str(config.model_path), params=mparams, verbose=False
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(
                f"llama.cpp could not load the model file {config.model_path}; "
                "it is damaged or of an architecture this llama.cpp build does not support."
            ) from exc
        self._stack.callback(self.model.close)
        model = self.model.model
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model)))
        n_head = max(1, int(llama_cpp.llama_model_n_head(model)))
        n_head_kv = int(llama_cpp.llama_model_n_head_kv(model)) or n_head
        n_embd = int(llama_cpp.llama_model_n_embd(model))
        self.shape = KvShape(
            int(llama_cpp.llama_model_n_layer(model)),
            n_embd // n_head * n_head_kv,
            n_embd // n_head * n_head_kv,
        )
        self.parallel = choose_parallel(
            parallel,
            shape=self.shape,
            n_ctx=config.n_ctx,
            kv_type=kv_type,
            model_bytes=int(llama_cpp.llama_model_size(model)),
            ram=available_ram(),
            limit=int(llama_cpp.llama_max_parallel_sequences()),
        )
        self.kv_bytes = self.shape.bytes(config.n_ctx, self.parallel, kv_type)
        logger.info(
            "KV cache: %s for PARALLEL=%d x N_CTX=%d (%s)",
            gib(self.kv_bytes),
            self.parallel,
            config.n_ctx,
            kv_type,
        )
        # Room for one prompt chunk plus the next token of every other sequence.
        self.n_batch = max(min(config.n_batch, config.n_ctx), self.parallel)
        n_threads = config.n_threads or max(multiprocessing.cpu_count() // 2, 1)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = config.n_ctx * self.parallel
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch
        cparams.n_seq_max = self.parallel
        cparams.kv_unified = False
        cparams.n_threads = n_threads
        cparams.n_threads_batch = config.n_threads or multiprocessing.cpu_count()
        cparams.type_k = GGML_TYPES[kv_type]
        cparams.type_v = GGML_TYPES[kv_type]
        # llama.cpp keeps a quantized V cache only with flash attention.
        cparams.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            if kv_type == "f16"
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        )
        cparams.no_perf = True
        self.params = cparams
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if ctx is None:
            hint = "lower PARALLEL or N_CTX"
            if kv_type != "f16":
                hint += f", or use KV_TYPE=f16 ({kv_type} needs heads a multiple of 32 wide)"
            raise ModelLoadError(
                f"llama.cpp could not make a context of {self.parallel} x {config.n_ctx} tokens "
                f"for {config.model_path.name}; {hint}."
            )
        self._stack.callback(llama_cpp.llama_free, ctx)
        self._ctx = Context(ctx)
        self.memory = llama_cpp.llama_get_memory(ctx)
        if config.lora_path is not None:
            self._apply_lora(config)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._stack.callback(llama_cpp.llama_batch_free, self._batch)
        self._no_abort = llama_cpp.ggml_abort_callback()
        # The token ids each sequence's cells hold, position by position.
        self.tokens: list[list[int]] = [[] for _ in range(self.parallel)]

    def _apply_lora(self, config: ModelConfig) -> None:
        assert config.lora_path is not None
        adapter = llama_cpp.llama_adapter_lora_init(
            self.model.model, str(config.lora_path).encode()
        )
        if adapter is None:
            raise ModelLoadError(
                f"The LoRA adapter {config.lora_path} could not be applied to "
                f"{config.model_path.name}; it was probably made for another model."
            )
        self._stack.callback(llama_cpp.llama_adapter_lora_free, adapter)
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
        scales = (ctypes.c_float * 1)(config.lora_scale)
        if llama_cpp.llama_set_adapters_lora(self._ctx.ctx, adapters, 1, scales):
            raise ModelLoadError(f"The LoRA adapter {config.lora_path} could not be applied.")

    @property
    def ctx(self) -> Any:
        return self._ctx.ctx

    # -- what the tests and the state cache look at -------------------------------------------

    @property
    def n_tokens(self) -> int:
        """Cells in use, all sequences together."""
        return sum(len(tokens) for tokens in self.tokens)

    @property
    def input_ids(self) -> npt.NDArray[np.intc]:
        """The token ids all sequences hold, one after the other."""
        return np.array([t for tokens in self.tokens for t in tokens], dtype=np.intc)

    # -- decoding -----------------------------------------------------------------------------

    def decode(self, entries: Sequence[Entry], abort: Callable[[], bool] | None = None) -> None:
        """Evaluate one batch; on failure no sequence keeps any cell of this batch."""
        batch = self._batch
        assert 0 < len(entries) <= self.n_batch
        for i, entry in enumerate(entries):
            batch.token[i] = entry.token
            batch.pos[i] = entry.pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = entry.seq
            batch.logits[i] = entry.logits
        batch.n_tokens = len(entries)
        callback = llama_cpp.ggml_abort_callback(lambda _data: abort()) if abort else self._no_abort
        llama_cpp.llama_set_abort_callback(self.ctx, callback, None)
        try:
            self._ctx.decode(batch)
        except DecodeError:
            # llama.cpp drops only the failed micro-batch; earlier ones of this call stay.
            first: dict[int, int] = {}
            for entry in entries:
                first[entry.seq] = min(first.get(entry.seq, entry.pos), entry.pos)
            for seq, pos in first.items():
                llama_cpp.llama_memory_seq_rm(self.memory, seq, pos, -1)
            raise
        finally:
            llama_cpp.llama_set_abort_callback(self.ctx, self._no_abort, None)
        for entry in entries:
            self.tokens[entry.seq].append(entry.token)

    def logits(self, index: int) -> npt.NDArray[np.single]:
        """The logits of the batch's `index`th token, as a writable view."""
        pointer = llama_cpp.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    # -- cells --------------------------------------------------------------------------------

    def truncate(self, seq: int, keep: int) -> None:
        """Keep the first `keep` cells of `seq`; 0 empties it."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq, keep, -1)
        del self.tokens[seq][keep:]

    def cells(self, seq: int) -> int:
        """Cells llama.cpp itself holds for `seq` (for checks; `tokens` is the bookkeeping)."""
        return int(llama_cpp.llama_memory_seq_pos_max(self.memory, seq)) + 1

    def close(self) -> None:
        self._stack.close()
