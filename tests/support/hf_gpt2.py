"""A tiny transformers GPT-2 (random weights, the tiny test tokenizer) and an independent
writer that turns it into a GGUF for llama.cpp.

The writer lives here, not in `models/`, on purpose: the conversion proofs compare the code
under test with transformers, and the base model's path into llama.cpp must not share code
with the converters it checks. Needs torch and transformers (the `heavy` test group).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from tiny_model import SPECIAL_TOKENS, train_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

N_EMBD, N_HEAD, N_LAYER, N_FF, N_CTX = 64, 4, 2, 256, 256
VOCAB_SIZE = 1200


def build_hf_gpt2(
    folder: Path, *, seed: int = 0, vocab_rows: int | None = None
) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Save a tiny GPT-2 and its tokenizer in `folder` (as `save_pretrained` lays them out).

    Every weight is a float16 value, so an f16 file of the model holds it exactly and only the
    arithmetic differs. The weights are larger than GPT-2's initialisation so the logits spread
    out and greedy choices are clear.
    """
    folder.mkdir(parents=True, exist_ok=True)
    raw = train_tokenizer(VOCAB_SIZE)
    vocab = raw.get_vocab()
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    config = GPT2Config(
        vocab_size=vocab_rows or len(vocab),  # more rows than tokens: a padded embedding
        n_positions=N_CTX,
        n_embd=N_EMBD,
        n_head=N_HEAD,
        n_layer=N_LAYER,
        n_inner=N_FF,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()  # type: ignore[no-untyped-call]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                value = 1.0 + 0.1 * noise
            elif param.ndim == 1:
                value = 0.05 * noise
            elif name.endswith("wte.weight"):
                value = 0.5 * noise
            else:
                value = 0.15 * noise
            param.copy_(value.half().float())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def _tokenizer_spec(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(tokenizer.backend_tokenizer.to_str())
    return spec


def write_hf_gpt2_gguf(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, path: Path
) -> Path:
    """Write the transformers model as an f32 GPT-2 GGUF that llama.cpp runs."""
    spec = _tokenizer_spec(tokenizer)
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(SPECIAL_TOKENS)
    config = model.config

    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<s>"])
    writer.add_eos_token_id(vocab["</s>"])
    writer.add_add_bos_token(False)

    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    # HF's Conv1D keeps weights as (n_in, n_out); GGUF wants (n_out, n_in).
    names = {
        "ln_1.weight": "attn_norm.weight",
        "ln_1.bias": "attn_norm.bias",
        "attn.c_attn.weight": "attn_qkv.weight",
        "attn.c_attn.bias": "attn_qkv.bias",
        "attn.c_proj.weight": "attn_output.weight",
        "attn.c_proj.bias": "attn_output.bias",
        "ln_2.weight": "ffn_norm.weight",
        "ln_2.bias": "ffn_norm.bias",
        "mlp.c_fc.weight": "ffn_up.weight",
        "mlp.c_fc.bias": "ffn_up.bias",
        "mlp.c_proj.weight": "ffn_down.weight",
        "mlp.c_proj.bias": "ffn_down.bias",
    }
    writer.add_tensor("token_embd.weight", state["transformer.wte.weight"])
    writer.add_tensor("position_embd.weight", state["transformer.wpe.weight"])
    for i in range(config.n_layer):
        for hf_name, gguf_name in names.items():
            value = state[f"transformer.h.{i}.{hf_name}"]
            if value.ndim == 2:
                value = np.ascontiguousarray(value.T)
            writer.add_tensor(f"blk.{i}.{gguf_name}", value)
    writer.add_tensor("output_norm.weight", state["transformer.ln_f.weight"])
    writer.add_tensor("output_norm.bias", state["transformer.ln_f.bias"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def hf_logits(model: torch.nn.Module, ids: list[int]) -> np.ndarray:
    """Logits for every position of `ids`, shape (len(ids), n_vocab)."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]))
    logits: np.ndarray = out.logits[0].float().numpy()
    return logits


def llama_logits(llama: Any, ids: list[int]) -> np.ndarray:
    """Logits for every position of `ids` from a `Llama(..., logits_all=True)`."""
    llama.reset()
    llama.eval(ids)
    return np.array(llama.scores[: len(ids)], dtype=np.float32)


def greedy_agreement(
    model: torch.nn.Module, llama: Any, ids: list[int], steps: int, margin: float
) -> int:
    """Generate greedily with llama.cpp and check every choice against transformers.

    Returns how many tokens were checked. Checking stops, without failing, at the first step
    where transformers' own top two logits are closer than `margin`: there rounding may
    legitimately pick either.
    """
    llama.reset()
    generated: list[int] = []
    for token in llama.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
        generated.append(int(token))
        if len(generated) == steps:
            break
    reference = hf_logits(model, ids + generated)
    checked = 0
    for step, token in enumerate(generated):
        row = reference[len(ids) - 1 + step]
        top2 = np.sort(row)[-2:]
        if top2[1] - top2[0] < margin:
            break
        assert token == int(np.argmax(row)), (
            f"step {step}: llama.cpp chose {token}, transformers {int(np.argmax(row))}"
        )
        checked += 1
    return checked
