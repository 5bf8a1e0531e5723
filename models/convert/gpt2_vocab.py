"""A GPT-2-style byte-level BPE vocabulary read from a Hugging Face tokenizer.json."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from models.errors import ModelError

logger = logging.getLogger(__name__)

BOS, EOS = "<s>", "</s>"


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    types: list[gguf.TokenType]
    merges: list[str]
    ids: dict[str, int]
    added: frozenset[str]


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE writes each byte as a printable character; this undoes it."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = {byte: byte for byte in printable}
    for extra, byte in enumerate(b for b in range(256) if b not in chars):
        chars[byte] = 256 + extra
    return {chr(code): byte for byte, code in chars.items()}


def read_tokenizer(path: Path, error: type[ModelError]) -> Vocabulary:
    """A byte-level BPE tokenizer.json with `<s>` and `</s>`; problems raise `error`."""
    try:
        spec: Any = json.loads(path.read_text(encoding="utf-8"))
        model = spec["model"]
        vocab: dict[str, int] = dict(model["vocab"])
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        added = list(spec.get("added_tokens") or [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise error(f"{path} is not a readable BPE tokenizer.json ({exc}).") from exc
    if model.get("type", "BPE") != "BPE":
        raise error(f"{path} is a {model.get('type')} tokenizer, not BPE.")
    special = {str(t["content"]) for t in added if t.get("special")}
    for token in added:
        vocab.setdefault(str(token["content"]), int(token["id"]))
    by_id = {i: t for t, i in vocab.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise error(f"{path} has gaps in its token ids.")
    if BOS not in vocab or EOS not in vocab:
        raise error(f"{path} has no {BOS} and {EOS} tokens.")
    special |= {BOS, EOS}
    tokens = [by_id[i] for i in range(len(by_id))]
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    return Vocabulary(tokens, types, merges, vocab, frozenset(str(t["content"]) for t in added))


def pad_vocabulary(vocab: Vocabulary, n_vocab: int) -> Vocabulary:
    """Embeddings are often padded to a multiple of 8 or 64 rows past the tokenizer's last
    token; as llama.cpp's own converter does, name those rows as unused tokens."""
    extra = n_vocab - len(vocab.tokens)
    if extra <= 0:
        return vocab
    logger.info("The embedding has %d rows more than the tokenizer: unused tokens", extra)
    padding = [f"[PAD{i}]" for i in range(len(vocab.tokens), n_vocab)]
    return Vocabulary(
        tokens=[*vocab.tokens, *padding],
        types=[*vocab.types, *[gguf.TokenType.UNUSED] * extra],
        merges=vocab.merges,
        ids=vocab.ids,
        added=vocab.added,
    )
