"""Per-sequence sampling with llama.cpp's sampler chains."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import llama_cpp
import numpy as np
import numpy.typing as npt

from models.runtime.context import Runtime

LogitsProcessor = Callable[[npt.NDArray[np.intc], npt.NDArray[np.single]], npt.NDArray[np.single]]
# How many of a sequence's latest tokens the repeat penalty looks at (llama-cpp-python's too).
PENALTY_LAST_N = 64


@dataclass(frozen=True)
class SamplingParams:
    # Defaults from the published ruGPT-3.5-13B LoRA generation config.
    temperature: float = 0.2
    top_p: float = 0.9
    top_k: int = 30
    repeat_penalty: float = 1.15
    # None: a different random seed for every reply.
    seed: int | None = None


class SequenceSampler:
    """One reply's chain: repeat penalty over the sequence's own tokens, then top-k, top-p,
    temperature and a seeded draw; greedy at temperature 0. Each reply starts from the seed,
    so the same prompt gives the same reply whatever else is decoded beside it."""

    def __init__(self, params: SamplingParams, history: Sequence[int], n_vocab: int) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if chain is None:
            raise MemoryError("llama.cpp could not make a sampler chain")
        self._chain = chain
        add = llama_cpp.llama_sampler_chain_add
        penalties = llama_cpp.llama_sampler_init_penalties(
            n_vocab, PENALTY_LAST_N, params.repeat_penalty, 0.0, 0.0
        )
        add(chain, penalties)
        if params.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
            add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed
            add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        for token in history[-PENALTY_LAST_N:]:
            llama_cpp.llama_sampler_accept(chain, token)

    def sample(
        self,
        runtime: Runtime,
        index: int,
        ids: Sequence[int],
        processor: LogitsProcessor | None,
    ) -> int:
        """Draw the next token from the batch's `index`th logits and remember it."""
        if processor is not None:
            logits = runtime.logits(index)
            logits[:] = processor(np.asarray(ids, dtype=np.intc), logits.copy())
        # llama_sampler_sample also accepts the token into the chain (the penalty's history).
        return int(llama_cpp.llama_sampler_sample(self._chain, runtime.ctx, index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
