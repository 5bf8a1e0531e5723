"""Prompt pieces and how they become token ids.

`Special` pieces go in by token id, `Text` pieces are tokenized with special-token parsing off,
`Markup` (template-authored text such as a GGUF Jinja template's output) is split at the
vocabulary's control tokens first. Adjacent text pieces are merged before tokenizing so the
ids match what the model saw in training (Hugging Face tokenizers split on special tokens and
encode the runs between them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from models.prompt.tokenizer import Tokenizer


@dataclass(frozen=True)
class Special:
    piece: str


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Markup:
    """Template-authored text that may itself contain special tokens (GGUF Jinja templates)."""

    text: str


Segment = Special | Text | Markup


def merge_text(segments: Sequence[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    for segment in segments:
        if isinstance(segment, Text):
            if not segment.text:
                continue
            if merged and isinstance(merged[-1], Text):
                merged[-1] = Text(merged[-1].text + segment.text)
                continue
        merged.append(segment)
    return merged


def expand_markup(segments: Sequence[Segment], tokenizer: Tokenizer) -> list[Segment]:
    """Split template-authored markup at the vocabulary's control tokens, as Hugging Face does.

    What is left between them is plain text that joins the neighbouring contents, so that
    "[INST] " written by a template and the user's words are tokenized as one run, exactly as
    in training (tokenized apart, SentencePiece would put a second space before the words).
    """
    out: list[Segment] = []
    pattern = tokenizer.control_pattern()
    for segment in segments:
        if not isinstance(segment, Markup):
            out.append(segment)
            continue
        if pattern is None:
            out.append(Text(segment.text))
            continue
        for i, part in enumerate(pattern.split(segment.text)):
            # re.split with one capturing group alternates text and separator.
            out.append(Special(part) if i % 2 else Text(part))
    return out


def encode_segments(segments: Sequence[Segment], tokenizer: Tokenizer) -> list[int]:
    ids: list[int] = []
    for segment in merge_text(expand_markup(segments, tokenizer)):
        if isinstance(segment, Special):
            ids.append(tokenizer.token_id(segment.piece))
        else:
            assert isinstance(segment, Text)
            ids.extend(tokenizer.encode(segment.text, special=False))
    return ids


def render_segments(segments: Sequence[Segment]) -> str:
    return "".join(s.piece if isinstance(s, Special) else s.text for s in segments)
