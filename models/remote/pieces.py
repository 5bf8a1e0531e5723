"""Generated token ids and their bytes, kept exact.

llama-server streams one token id per event, but holds an event back while the text ends
inside a UTF-8 character, and then sends only the newest id with all the held-back text. The
ids it did not send are recovered from that text: it is exactly their pieces, so they are
found in the vocabulary (for the usual case of one held-back token the piece is unique).
"""

from __future__ import annotations

import codecs
from functools import cached_property
from typing import Protocol


class Vocabulary(Protocol):
    def token_bytes(self, tokens: list[int], *, special: bool = False) -> bytes: ...

    @property
    def n_vocab(self) -> int: ...


class Pieces:
    def __init__(self, vocabulary: Vocabulary) -> None:
        self._vocabulary = vocabulary

    def piece(self, token: int) -> bytes:
        return self._vocabulary.token_bytes([token])

    @cached_property
    def _by_bytes(self) -> dict[bytes, int]:
        table: dict[bytes, int] = {}
        for token in range(self._vocabulary.n_vocab):
            piece = self.piece(token)
            if piece:
                table.setdefault(piece, token)
        return table

    @cached_property
    def _longest(self) -> int:
        return max((len(p) for p in self._by_bytes), default=1)

    def recover(self, held: bytes, count: int | None) -> list[int] | None:
        """Token ids whose pieces are exactly `held` (`count` of them when known, else as few
        as possible); None when the vocabulary cannot spell it."""
        table, longest = self._by_bytes, self._longest

        def spell(start: int, left: int | None) -> list[int] | None:
            if start == len(held):
                return [] if left in (None, 0) else None
            if left == 0:
                return None
            for end in range(min(len(held), start + longest), start, -1):
                token = table.get(held[start:end])
                if token is None:
                    continue
                rest = spell(end, None if left is None else left - 1)
                if rest is not None:
                    return [token, *rest]
            return None

        return spell(0, count)


class Detokenizer:
    """Text deltas from generated ids, never splitting a UTF-8 character (as the local
    scheduler does: an incremental decoder, replacement characters for invalid bytes)."""

    def __init__(self, pieces: Pieces) -> None:
        self._pieces = pieces
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token: int) -> str:
        return self._decoder.decode(self._pieces.piece(token))

    def end(self) -> str:
        return self._decoder.decode(b"", final=True)
