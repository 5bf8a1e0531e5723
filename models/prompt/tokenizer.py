"""The model's own tokenizer, loaded without weights.

It is a vocabulary-only llama.cpp model with no context at all (no KV cache, no compute
buffers), so that the event loop can count and encode tokens while the worker thread owns the
generating context, and so that a bot whose replies come from a remote server holds nothing
of the model but its vocabulary.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Protocol

import llama_cpp
from llama_cpp._internals import LlamaModel

from models.errors import ModelLoadError, TemplateError
from models.files.gguf_info import check_gguf

_SURROGATE = re.compile("[\ud800-\udfff]")


def well_formed(text: str) -> str:
    """`text` with surrogate pairs joined and lone surrogates (which Telegram may deliver and
    the storage keeps) replaced by U+FFFD, so the model sees a replacement character."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class Tokenizer(Protocol):
    def encode(self, text: str, *, special: bool = False) -> list[int]: ...

    def decode(self, tokens: list[int], *, special: bool = False) -> str: ...

    def token_id(self, piece: str) -> int: ...

    def special_piece(self, kind: str) -> str: ...

    def control_pattern(self) -> re.Pattern[str] | None: ...

    def eog_ids(self) -> set[int]: ...

    @property
    def n_ctx_train(self) -> int: ...

    @property
    def metadata(self) -> dict[str, str]: ...


class LlamaTokenizer:
    def __init__(self, model: LlamaModel) -> None:
        self._model = model
        self._special_cache: dict[str, int] = {}

    @classmethod
    def from_file(cls, path: Path) -> LlamaTokenizer:
        check_gguf(path)
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        try:
            return cls(LlamaModel(path_model=str(path), params=params, verbose=False))
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(
                f"llama.cpp could not read the vocabulary of the model file {path}; "
                "it is damaged or of an architecture this llama.cpp build does not support."
            ) from exc

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of `text`; without `special` no piece of it becomes an added token.

        llama.cpp matches user-defined added tokens (Qwen3's `<think>`) even with special
        parsing off, so such a piece typed by a user is tokenized as its characters instead.
        """
        if not text:
            return []
        text = well_formed(text)
        pattern = None if special else self._user_defined_pattern
        if pattern is None or not pattern.search(text):
            return self._tokenize(text, special)
        ids: list[int] = []
        for i, part in enumerate(pattern.split(text)):
            if i % 2:  # an added token's text: split so that no part of it matches one
                ids += self.encode(part[:-1]) + self.encode(part[-1:])
            elif part:
                ids += self._tokenize(part, False)
        return ids

    def _tokenize(self, text: str, special: bool) -> list[int]:
        ids: list[int] = self._model.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        return ids

    def decode(self, tokens: list[int], *, special: bool = False) -> str:
        """Text of `tokens`; with `special`, control tokens such as `</s>` appear as text."""
        return self.token_bytes(tokens, special=special).decode("utf-8", errors="replace")

    def token_bytes(self, tokens: list[int], *, special: bool = False) -> bytes:
        """The raw bytes of `tokens`; a token may end inside a UTF-8 character."""
        data: bytes = self._model.detokenize(tokens, special=special)
        return data

    def token_id(self, piece: str) -> int:
        """The id of a special token such as `<s>`; it must be a single token of the vocab."""
        if piece not in self._special_cache:
            ids = self._model.tokenize(piece.encode("utf-8"), add_bos=False, special=True)
            if len(ids) != 1:
                raise TemplateError(
                    f"The model's vocabulary has no special token {piece!r}; "
                    "choose a TEMPLATE that matches this model."
                )
            self._special_cache[piece] = ids[0]
        return self._special_cache[piece]

    def special_piece(self, kind: str) -> str:
        """The text of the model's `bos` or `eos` token, or "" when it has none."""
        token = self.metadata.get(f"tokenizer.ggml.{kind}_token_id")
        if token is None:
            return ""
        piece: bytes = self._model.detokenize([int(token)], special=True)
        return piece.decode("utf-8", errors="replace")

    def eog_ids(self) -> set[int]:
        """Tokens llama.cpp treats as the end of generation (EOS, EOT and the like)."""
        return set(self._eog_ids)

    @cached_property
    def _eog_ids(self) -> frozenset[int]:
        vocab = self._model.vocab
        return frozenset(
            token
            for token in range(llama_cpp.llama_vocab_n_tokens(vocab))
            if llama_cpp.llama_vocab_is_eog(vocab, token)
        )

    def control_pattern(self) -> re.Pattern[str] | None:
        """A regex matching the text of any control or user-defined added token (longest
        first), in one group: what a template's markup may write as a token."""
        return self._control_pattern

    @cached_property
    def _control_pattern(self) -> re.Pattern[str] | None:
        return self._pattern(
            llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        )

    @cached_property
    def _user_defined_pattern(self) -> re.Pattern[str] | None:
        return self._pattern(llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED)

    def _pattern(self, attributes: int) -> re.Pattern[str] | None:
        vocab = self._model.vocab
        pieces = set()
        for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
            if llama_cpp.llama_vocab_get_attr(vocab, token) & attributes:
                piece = self.decode([token], special=True)
                if piece:
                    pieces.add(piece)
        if not pieces:
            return None
        ordered = sorted(pieces, key=lambda piece: (-len(piece), piece))
        return re.compile("(" + "|".join(re.escape(piece) for piece in ordered) + ")")

    @property
    def n_vocab(self) -> int:
        return int(llama_cpp.llama_vocab_n_tokens(self._model.vocab))

    def close(self) -> None:
        self._model.close()  # type: ignore[no-untyped-call]

    @cached_property
    def n_ctx_train(self) -> int:
        arch = self.metadata.get("general.architecture", "")
        return int(self.metadata.get(f"{arch}.context_length", "0"))

    @cached_property
    def metadata(self) -> dict[str, str]:
        return dict(self._model.metadata())
