"""The random weights of the family stand-ins (see `family_models`), per architecture.

Random weights make random text; two tricks keep replies readable and long enough: the first
embedding dimension is a constant that no layer writes to, and the output rows of control and
byte-fragment tokens point against it, so those tokens never win (the end-of-turn token only
mildly loses, so replies end now and then).
"""

from __future__ import annotations

import gguf
import numpy as np

N_EMBD, N_HEAD, N_HEAD_KV, N_LAYER, N_FF = 64, 4, 2, 2, 128


class Weights:
    def __init__(self, writer: gguf.GGUFWriter, seed: int) -> None:
        self.writer = writer
        self.rng = np.random.default_rng(seed)

    def matrix(self, name: str, n_out: int, n_in: int, *, scale: float = 0.15) -> None:
        values = self.rng.standard_normal((n_out, n_in)).astype(np.float32) * scale
        if n_in == N_EMBD:
            values[:, 0] = 0.0  # reads from the constant dimension would just add a bias
        if n_out == N_EMBD:
            values[0, :] = 0.0  # nothing writes to the constant dimension
        self.writer.add_tensor(name, values.astype(np.float16))

    def experts(self, name: str, n_expert: int, n_out: int, n_in: int) -> None:
        values = self.rng.standard_normal((n_expert, n_out, n_in)).astype(np.float32) * 0.15
        if n_in == N_EMBD:
            values[:, :, 0] = 0.0
        if n_out == N_EMBD:
            values[:, 0, :] = 0.0
        self.writer.add_tensor(name, values.astype(np.float16))

    def ones(self, name: str, n: int) -> None:
        self.writer.add_tensor(name, np.ones(n, dtype=np.float32))

    def vector(self, name: str, n: int) -> None:
        self.writer.add_tensor(name, (self.rng.standard_normal(n) * 0.02).astype(np.float32))

    def embeddings(self, n_vocab: int, unwanted: list[int]) -> None:
        embd = self.rng.standard_normal((n_vocab, N_EMBD)).astype(np.float32) * 0.5
        embd[:, 0] = 4.0
        self.writer.add_tensor("token_embd.weight", embd.astype(np.float16))
        self.ones("output_norm.weight", N_EMBD)
        output = self.rng.standard_normal((n_vocab, N_EMBD)).astype(np.float32) * 0.5
        output[:, 0] = 0.0
        output[unwanted, 0] = -30.0
        self.writer.add_tensor("output.weight", output.astype(np.float16))


def _attention(w: Weights, i: int, head_dim: int) -> None:
    w.ones(f"blk.{i}.attn_norm.weight", N_EMBD)
    w.matrix(f"blk.{i}.attn_q.weight", N_HEAD * head_dim, N_EMBD)
    w.matrix(f"blk.{i}.attn_k.weight", N_HEAD_KV * head_dim, N_EMBD)
    w.matrix(f"blk.{i}.attn_v.weight", N_HEAD_KV * head_dim, N_EMBD)
    w.matrix(f"blk.{i}.attn_output.weight", N_EMBD, N_HEAD * head_dim)


def _dense_ffn(w: Weights, i: int) -> None:
    w.ones(f"blk.{i}.ffn_norm.weight", N_EMBD)
    w.matrix(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
    w.matrix(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
    w.matrix(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)


def llama_like(writer: gguf.GGUFWriter, w: Weights, *, qk_norm: bool) -> None:
    head_dim = N_EMBD // N_HEAD
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_feed_forward_length(N_FF)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    if qk_norm:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    for i in range(N_LAYER):
        _attention(w, i, head_dim)
        if qk_norm:
            w.ones(f"blk.{i}.attn_q_norm.weight", head_dim)
            w.ones(f"blk.{i}.attn_k_norm.weight", head_dim)
        _dense_ffn(w, i)


# MoE shapes, scaled down; one dense block leads, as in GigaChat-20B-A3B and GigaChat 3.
N_EXPERT, N_EXPERT_USED, N_EXPERT_SHARED, N_FF_EXP = 4, 2, 1, 32
Q_LORA, KV_LORA, QK_NOPE, QK_ROPE, V_HEAD = 32, 32, 16, 8, 16


def _moe_keys(writer: gguf.GGUFWriter) -> None:
    arch = writer.arch
    writer.add_uint32(f"{arch}.leading_dense_block_count", 1)
    writer.add_uint32(f"{arch}.expert_feed_forward_length", N_FF_EXP)
    writer.add_uint32(f"{arch}.expert_count", N_EXPERT)
    writer.add_uint32(f"{arch}.expert_used_count", N_EXPERT_USED)
    writer.add_uint32(f"{arch}.expert_shared_count", N_EXPERT_SHARED)
    writer.add_float32(f"{arch}.expert_weights_scale", 1.0)


def _moe_ffn(w: Weights, i: int) -> None:
    w.ones(f"blk.{i}.ffn_norm.weight", N_EMBD)
    w.matrix(f"blk.{i}.ffn_gate_inp.weight", N_EXPERT, N_EMBD)
    w.experts(f"blk.{i}.ffn_gate_exps.weight", N_EXPERT, N_FF_EXP, N_EMBD)
    w.experts(f"blk.{i}.ffn_up_exps.weight", N_EXPERT, N_FF_EXP, N_EMBD)
    w.experts(f"blk.{i}.ffn_down_exps.weight", N_EXPERT, N_EMBD, N_FF_EXP)
    shared = N_FF_EXP * N_EXPERT_SHARED
    w.matrix(f"blk.{i}.ffn_gate_shexp.weight", shared, N_EMBD)
    w.matrix(f"blk.{i}.ffn_up_shexp.weight", shared, N_EMBD)
    w.matrix(f"blk.{i}.ffn_down_shexp.weight", N_EMBD, shared)


def deepseek(writer: gguf.GGUFWriter, w: Weights) -> None:
    """DeepSeek MoE v1 (llama.cpp's `deepseek`, GigaChat-20B-A3B): llama-style grouped-query
    attention with per-head keys and values in the cache, then a leading dense block and MoE
    blocks with shared experts."""
    head_dim = N_EMBD // N_HEAD
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_feed_forward_length(N_FF)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    _moe_keys(writer)
    for i in range(N_LAYER):
        _attention(w, i, head_dim)
        if i == 0:
            _dense_ffn(w, i)
        else:
            _moe_ffn(w, i)


def deepseek2(writer: gguf.GGUFWriter, w: Weights, *, mla: bool = False) -> None:
    """DeepSeek-2 MoE; `mla` writes the split layout of today's converter (GigaChat 3), where
    the cache keeps one compressed latent per token instead of per-head keys and values."""
    arch = writer.arch
    writer.add_head_count(N_HEAD)
    writer.add_feed_forward_length(N_FF)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_dimension_count(QK_ROPE)
    writer.add_rope_freq_base(10000.0)
    if mla:
        writer.add_head_count_kv(1)
        writer.add_key_length(KV_LORA + QK_ROPE)
        writer.add_value_length(KV_LORA)
        writer.add_uint32(f"{arch}.attention.key_length_mla", QK_NOPE + QK_ROPE)
        writer.add_uint32(f"{arch}.attention.value_length_mla", V_HEAD)
    else:
        writer.add_head_count_kv(N_HEAD)
        writer.add_key_length(QK_NOPE + QK_ROPE)
        writer.add_value_length(V_HEAD)
    _moe_keys(writer)
    writer.add_uint32(f"{arch}.attention.q_lora_rank", Q_LORA)
    writer.add_uint32(f"{arch}.attention.kv_lora_rank", KV_LORA)
    writer.add_bool(f"{arch}.expert_weights_norm", False)
    writer.add_uint32(f"{arch}.expert_gating_func", 1)  # softmax
    for i in range(N_LAYER):
        w.ones(f"blk.{i}.attn_norm.weight", N_EMBD)
        w.ones(f"blk.{i}.attn_q_a_norm.weight", Q_LORA)
        w.ones(f"blk.{i}.attn_kv_a_norm.weight", KV_LORA)
        w.matrix(f"blk.{i}.attn_q_a.weight", Q_LORA, N_EMBD)
        w.matrix(f"blk.{i}.attn_q_b.weight", N_HEAD * (QK_NOPE + QK_ROPE), Q_LORA)
        w.matrix(f"blk.{i}.attn_kv_a_mqa.weight", KV_LORA + QK_ROPE, N_EMBD)
        if mla:
            w.experts(f"blk.{i}.attn_k_b.weight", N_HEAD, KV_LORA, QK_NOPE)
            w.experts(f"blk.{i}.attn_v_b.weight", N_HEAD, V_HEAD, KV_LORA)
        else:
            w.matrix(f"blk.{i}.attn_kv_b.weight", N_HEAD * (QK_NOPE + V_HEAD), KV_LORA)
        w.matrix(f"blk.{i}.attn_output.weight", N_EMBD, N_HEAD * V_HEAD)
        if i == 0:
            _dense_ffn(w, i)
        else:
            _moe_ffn(w, i)
