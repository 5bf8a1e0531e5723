"""Build a tiny but real GPT-2-architecture GGUF model at test time.

The weights are random, the tokenizer is a byte-level BPE trained here on a few KB of text,
with ruGPT-3.5's special-token layout (`<s>`=2, `</s>`=3) plus the control tokens the other
chat templates need. llama.cpp loads and runs it like any other GPT-2 GGUF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = [
    "<pad>",
    "<unk>",
    "<s>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|message_sep|>",
    "<|role_sep|>",
]

CORPUS_RU = """
Привет! Как дела? У меня всё хорошо, спасибо. Сегодня хорошая погода, светит солнце.
Ты — Сайга, русскоязычный автоматический ассистент. Ты разговариваешь с людьми и помогаешь им.
Ты — ruGPT-3.5, русскоязычный автоматический ассистент. Ты разговариваешь с людьми и помогаешь им.
Домовой живёт в доме и помогает хозяевам. Он следит за порядком, охраняет дом и семью.
Москва — столица России. Санкт-Петербург стоит на Неве. Волга впадает в Каспийское море.
Расскажи мне сказку про кота и лису. Жили-были дед да баба, и была у них курочка Ряба.
Что такое нейронная сеть? Это модель, которая учится на данных и делает предсказания.
Напиши стихотворение о зиме. Мороз и солнце; день чудесный! Ещё ты дремлешь, друг прелестный.
Спасибо за помощь. Пожалуйста, обращайтесь. До свидания! Хорошего дня и удачи во всём.
Сколько будет два плюс два? Два плюс два будет четыре. А три умножить на три — девять.
Как приготовить борщ? Нужны свёкла, капуста, картофель, морковь, лук и немного мяса.
Где находится ближайшая библиотека? Она на соседней улице, рядом с почтой и парком.
"""

CORPUS_EN = """
Hello! How are you? I am fine, thank you. The weather is nice today and the sun is shining.
You are a helpful assistant. Answer the user's questions briefly and politely.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a step.
What is a neural network? It is a model that learns from data and makes predictions.
Write a poem about winter. Snow falls softly on the quiet town while the lights glow warm.
user bot system assistant available functions
"""


@dataclass(frozen=True)
class TinyModelShape:
    n_embd: int = 64
    n_head: int = 4
    n_layer: int = 2
    n_ff: int = 256
    n_ctx: int = 2048
    vocab_size: int = 1200


# About 205M parameters, ruGPT-3.5's context: the model `domovoy bench` is measured with.
BENCH_SHAPE = TinyModelShape(n_embd=1024, n_head=16, n_layer=16, n_ff=4096, n_ctx=2048)


def train_tokenizer(vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = (CORPUS_RU + CORPUS_EN).strip().splitlines()
    tokenizer.train_from_iterator(lines * 4, trainer=trainer)
    return tokenizer


def _byte_decoder() -> dict[str, int]:
    # GPT-2's printable stand-ins for raw bytes, inverted: the vocabulary stores tokens this way.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def token_bytes(token: str) -> bytes:
    decoder = _byte_decoder()
    return bytes(decoder[ch] for ch in token)


def _is_incomplete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def build_tiny_gguf(
    path: Path,
    *,
    shape: TinyModelShape | None = None,
    seed: int = 0,
    suppress_byte_tokens: bool = True,
    chat_template: str | None = None,
    weight_type: str = "f16",
    weight_scale: float = 0.2,
) -> Path:
    """Write the model to `path` and return it.

    With `suppress_byte_tokens`, tokens that are not valid UTF-8 on their own get a large
    negative logit through a fixed bias carried by the final layer norm, so random weights
    still produce readable text. `weight_type` "q8_0" quantizes the blocks' matrices (the
    embeddings and the output stay f16); `weight_scale` is the spread of the random matrices
    (a wide model wants a smaller one to keep its activations tame).
    """
    if weight_type not in ("f16", "q8_0"):
        raise ValueError(f"weight_type is f16 or q8_0, not {weight_type!r}")
    shape = shape or TinyModelShape()
    rng = np.random.default_rng(seed)
    tokenizer = train_tokenizer(shape.vocab_size)
    spec = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda item: item[1])]
    n_vocab = len(tokens)
    special = set(SPECIAL_TOKENS)
    token_types = [
        gguf.TokenType.CONTROL if tok in special else gguf.TokenType.NORMAL for tok in tokens
    ]

    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_name("domovoy-tiny-test")
    writer.add_context_length(shape.n_ctx)
    writer.add_embedding_length(shape.n_embd)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_block_count(shape.n_layer)
    writer.add_head_count(shape.n_head)
    writer.add_layer_norm_eps(1e-5)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_Q8_0 if weight_type == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<s>"])
    writer.add_eos_token_id(vocab["</s>"])
    writer.add_pad_token_id(vocab["<pad>"])
    writer.add_unk_token_id(vocab["<unk>"])
    writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    e, f = shape.n_embd, shape.n_ff

    def mat(rows: int, cols: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float16)

    def vec(n: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(n) * scale).astype(np.float32)

    def block_matrix(name: str, rows: int, cols: int) -> None:
        if weight_type == "f16":
            writer.add_tensor(name, mat(rows, cols, weight_scale))
            return
        values = rng.standard_normal((rows, cols), dtype=np.float32) * weight_scale
        quantized = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    writer.add_tensor("token_embd.weight", mat(n_vocab, e, 0.5))
    writer.add_tensor("position_embd.weight", mat(shape.n_ctx, e, 0.1))
    for i in range(shape.n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(e, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_norm.bias", vec(e))
        block_matrix(f"blk.{i}.attn_qkv.weight", 3 * e, e)
        writer.add_tensor(f"blk.{i}.attn_qkv.bias", vec(3 * e))
        block_matrix(f"blk.{i}.attn_output.weight", e, e)
        writer.add_tensor(f"blk.{i}.attn_output.bias", vec(e))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(e, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.bias", vec(e))
        block_matrix(f"blk.{i}.ffn_up.weight", f, e)
        writer.add_tensor(f"blk.{i}.ffn_up.bias", vec(f))
        block_matrix(f"blk.{i}.ffn_down.weight", e, f)
        writer.add_tensor(f"blk.{i}.ffn_down.bias", vec(e))

    # The final norm's bias is a fixed direction `d` that every hidden state carries; output
    # rows of unwanted tokens point against it, so their logits are always very negative.
    direction = rng.standard_normal(e).astype(np.float32)
    direction /= np.linalg.norm(direction)
    writer.add_tensor("output_norm.weight", np.full(e, 0.3, dtype=np.float32))
    writer.add_tensor("output_norm.bias", direction * 4.0)
    output = rng.standard_normal((n_vocab, e)).astype(np.float32) * 0.5
    unwanted = [vocab[tok] for tok in SPECIAL_TOKENS if tok not in {"</s>"}]
    if suppress_byte_tokens:
        unwanted += [
            idx
            for idx, tok in enumerate(tokens)
            if tok not in special and _is_incomplete_utf8(token_bytes(tok))
        ]
    # `</s>` is suppressed too, mildly, so replies run for a while before they end.
    output[unwanted] -= direction * 40.0
    output[vocab["</s>"]] -= direction * 2.0
    writer.add_tensor("output.weight", output.astype(np.float16))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def build_tiny_lora(
    path: Path,
    *,
    shape: TinyModelShape | None = None,
    rank: int = 4,
    alpha: float = 8.0,
    seed: int = 1,
    architecture: str = "gpt2",
) -> Path:
    """A LoRA adapter GGUF for the tiny model's attention QKV projections."""
    shape = shape or TinyModelShape()
    rng = np.random.default_rng(seed)
    e = shape.n_embd
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for i in range(shape.n_layer):
        lora_a = (rng.standard_normal((rank, e)) * 0.5).astype(np.float32)
        lora_b = (rng.standard_normal((3 * e, rank)) * 0.5).astype(np.float32)
        writer.add_tensor(f"blk.{i}.attn_qkv.weight.lora_a", lora_a)
        writer.add_tensor(f"blk.{i}.attn_qkv.weight.lora_b", lora_b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def build_bench_gguf(path: Path, *, weight_type: str = "q8_0") -> Path:
    """The ~200M-parameter random GPT-2 of `BENCH_SHAPE` (about 230 MB in Q8_0)."""
    return build_tiny_gguf(path, shape=BENCH_SHAPE, weight_type=weight_type, weight_scale=0.2 / 4)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write the random GPT-2 models tests use.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--bench", action="store_true", help="the ~200M model of BENCH_SHAPE")
    parser.add_argument("--type", default="q8_0", choices=["f16", "q8_0"])
    args = parser.parse_args()
    if args.bench:
        print(build_bench_gguf(args.path, weight_type=args.type))
    else:
        print(build_tiny_gguf(args.path))
