"""Tiny real stand-ins for every model family Domovoy offers, built at test time.

Each stand-in is a GGUF llama.cpp loads like the real model of its family: the same
architecture (llama, qwen3, deepseek MoE v1, deepseek2 MoE), the same kind of tokenizer
(SentencePiece with byte fallback, Llama-3-style or Qwen-style byte-level BPE, GPT-2-style
BPE for GigaChat) with the family's control tokens, random weights. The tokenizer is trained
here on the corpus of `tiny_model`, and the same trained tokenizer is also saved in Hugging
Face's layout, so the tests can compare Domovoy's prompts with `transformers` applying the
family's published chat template.
The weights are random (see `family_weights`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gguf
from family_weights import N_EMBD, N_LAYER, Weights, deepseek, deepseek2, llama_like
from tiny_model import CORPUS_EN, CORPUS_RU, token_bytes
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

# Llama 3's split pattern (its tokenizer.json); Qwen2/3 differ only in taking digits one by one.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# Mistral Nemo's Tekken tokenizer (its tokenizer.json): case-aware words, digits one by one.
TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TokenizerKind = Literal["spm", "bpe"]


@dataclass(frozen=True)
class Family:
    name: str
    arch: str
    tokenizer: TokenizerKind
    bos: str
    eos: str
    special: tuple[str, ...]  # control tokens besides bos/eos/unk/pad
    # Added tokens that are not control tokens (Qwen3's `<think>`: `"special": false` in its
    # tokenizer_config.json, USER_DEFINED in its GGUF).
    user_defined: tuple[str, ...] = ()
    pre: str = ""  # llama.cpp's pre-tokenizer name (BPE only)
    split: str | None = None  # the regex the HF pre-tokenizer splits with (None: GPT-2's)
    ignore_merges: bool = False
    add_space_prefix: bool = True  # SentencePiece's dummy prefix
    mla: bool = False  # DeepSeek-2 with multi-head latent attention (GigaChat 3)
    stands_for: tuple[str, ...] = ()  # registry entries whose family this is
    n_ctx: int = 4096


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="mistral-spm",
            arch="llama",
            tokenizer="spm",
            bos="<s>",
            eos="</s>",
            special=("[INST]", "[/INST]"),
            stands_for=("saiga-mistral-7b", "vikhr-7b-0.4"),
        ),
        Family(
            name="nemo-tekken",
            arch="llama",
            tokenizer="bpe",
            bos="<s>",
            eos="</s>",
            special=("[INST]", "[/INST]"),
            pre="tekken",
            split=TEKKEN_SPLIT,
            ignore_merges=True,
            stands_for=("saiga-nemo-12b", "vikhr-nemo-12b"),
        ),
        Family(
            name="yandex-spm",
            arch="llama",
            tokenizer="spm",
            bos="<s>",
            eos="</s>",
            special=("[SEP]",),
            add_space_prefix=False,
            stands_for=("yandexgpt-5-lite-8b",),
        ),
        Family(
            name="llama3-bpe",
            arch="llama",
            tokenizer="bpe",
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            special=("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"),
            pre="llama-bpe",
            split=LLAMA3_SPLIT,
            ignore_merges=True,
            stands_for=("saiga-llama3-8b",),
        ),
        Family(
            name="qwen3",
            arch="qwen3",
            tokenizer="bpe",
            bos="",
            eos="<|im_end|>",
            special=("<|endoftext|>", "<|im_start|>"),
            user_defined=("<think>", "</think>"),
            pre="qwen2",
            split=QWEN2_SPLIT,
            stands_for=("t-lite-it-2.1", "t-pro-it-2.0"),
        ),
        Family(
            name="gigachat-moe",
            arch="deepseek",
            tokenizer="bpe",
            bos="<s>",
            eos="</s>",
            special=("<|message_sep|>", "<|role_sep|>"),
            pre="gigachat",
            stands_for=("gigachat-20b-a3b",),
        ),
        Family(
            name="gigachat3-mla",
            arch="deepseek2",
            tokenizer="bpe",
            bos="<s>",
            eos="</s>",
            special=("<|message_sep|>", "<|role_sep|>"),
            pre="gigachat",
            mla=True,
            stands_for=("gigachat3-10b-a1.8b",),
        ),
    )
}

VOCAB_SIZE = 1000


@dataclass(frozen=True)
class StandIn:
    family: Family
    gguf_path: Path
    hf_dir: Path  # the tokenizer files: tokenizer.json (BPE) or tokenizer.model (SentencePiece)


def _lines() -> list[str]:
    return (CORPUS_RU + CORPUS_EN).strip().splitlines() * 4


# ---------------------------------------------------------------- tokenizers


@dataclass
class _Vocab:
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str] | None
    unwanted: list[int]  # ids the random model must never pick


def _train_spm(family: Family, folder: Path) -> _Vocab:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_lines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=family.add_space_prefix,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=list(family.special),
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    tokens, types, scores, unwanted = [], [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
        if types[-1] != gguf.TokenType.NORMAL and tokens[-1] != family.eos:
            unwanted.append(i)
    return _Vocab(tokens, [int(t) for t in types], scores, None, unwanted)


def _train_bpe(family: Family) -> tuple[Tokenizer, _Vocab]:
    specials = [t for t in (family.bos, family.eos, *family.special) if t]
    tokenizer = Tokenizer(models.BPE(ignore_merges=family.ignore_merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family.split is None)
    if family.split is None:
        tokenizer.pre_tokenizer = byte_level
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(family.split), behavior="isolated"), byte_level]
        )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_lines(), trainer=trainer)
    tokenizer.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in family.user_defined]
    )
    spec = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = tokenizer.get_vocab(with_added_tokens=True)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda item: item[1])]
    types = [
        int(
            gguf.TokenType.CONTROL
            if tok in specials
            else gguf.TokenType.USER_DEFINED
            if tok in family.user_defined
            else gguf.TokenType.NORMAL
        )
        for tok in tokens
    ]
    unwanted = [vocab[t] for t in (*specials, *family.user_defined) if t != family.eos]
    for idx, tok in enumerate(tokens):
        if tok in specials or tok in family.user_defined:
            continue
        try:
            token_bytes(tok).decode("utf-8")
        except UnicodeDecodeError:
            unwanted.append(idx)
    return tokenizer, _Vocab(tokens, types, None, merges, unwanted)


def hf_tokenizer(stand_in: StandIn, chat_template: str) -> Any:
    """The stand-in's tokenizer as `transformers` builds it from the family's tokenizer files.

    Needs transformers (and, for SentencePiece, protobuf): only the `heavy` tests call it.
    """
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    family, folder = stand_in.family, stand_in.hf_dir
    if family.tokenizer == "bpe":
        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    else:
        backend = LlamaTokenizer.from_pretrained(str(folder)).backend_tokenizer
        # As Mistral's tokenizer.json has it (`legacy`): a space before every run of text,
        # also after control tokens, which is what SentencePiece itself and llama.cpp do.
        steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", "\u2581")]
        if family.add_space_prefix:
            steps.insert(0, normalizers.Prepend("\u2581"))
        backend.normalizer = normalizers.Sequence(steps)
        backend.pre_tokenizer = None
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token=family.bos or None,
        eos_token=family.eos,
        unk_token="<unk>" if family.tokenizer == "spm" else None,
        additional_special_tokens=list(family.special),
    )
    tokenizer.chat_template = chat_template
    return tokenizer


# ---------------------------------------------------------------- the file


def build_stand_in(
    family: Family | str,
    folder: Path,
    *,
    chat_template: str | None = None,
    n_ctx: int | None = None,
    seed: int = 0,
) -> StandIn:
    """Write `model.gguf` and the Hugging Face tokenizer files into `folder`."""
    family = FAMILIES[family] if isinstance(family, str) else family
    folder.mkdir(parents=True, exist_ok=True)
    bpe: Tokenizer | None = None
    if family.tokenizer == "spm":
        vocab = _train_spm(family, folder)
    else:
        bpe, vocab = _train_bpe(family)
    if bpe is not None:
        bpe.save(str(folder / "tokenizer.json"))

    path = folder / "model.gguf"
    writer = gguf.GGUFWriter(str(path), family.arch)
    writer.add_name(f"domovoy-stand-in-{family.name}")
    writer.add_context_length(n_ctx or family.n_ctx)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_vocab_size(len(vocab.tokens))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    index = {tok: i for i, tok in enumerate(vocab.tokens)}
    if family.tokenizer == "spm":
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_add_space_prefix(family.add_space_prefix)
        writer.add_unk_token_id(index["<unk>"])
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(family.pre)
        assert vocab.merges is not None
        writer.add_token_merges(vocab.merges)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if family.bos:
        writer.add_bos_token_id(index[family.bos])
    writer.add_eos_token_id(index[family.eos])
    writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    weights = Weights(writer, seed)
    weights.embeddings(len(vocab.tokens), vocab.unwanted)
    if family.arch == "deepseek":
        deepseek(writer, weights)
    elif family.arch == "deepseek2":
        deepseek2(writer, weights, mla=family.mla)
    else:
        llama_like(writer, weights, qk_norm=family.arch == "qwen3")

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return StandIn(family=family, gguf_path=path, hf_dir=folder)


def tested_registry_names() -> set[str]:
    return {name for family in FAMILIES.values() for name in family.stands_for}
