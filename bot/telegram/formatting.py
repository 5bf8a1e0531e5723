"""Telegram's message limits and the model's Markdown turned into Telegram HTML."""

from __future__ import annotations

import re

from chatgpt_md_converter import telegram_format

# Telegram counts message length in UTF-16 code units after entity parsing.
MESSAGE_LIMIT = 4096

_SURROGATE = re.compile("[\ud800-\udfff]")
_SENTENCE_END = re.compile(r"[.!?…;](?:[\"»)\]]*)\s+")
_FENCE = re.compile(r"^[ \t]*```[^\n`]*$", re.MULTILINE)
FENCE_CLOSE = "\n```"


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def visible_text(text: str) -> str:
    """`text` as Telegram accepts it: strings must be valid UTF-8, so a lone UTF-16 surrogate
    (a user may send one, and the storage keeps it exactly) becomes U+FFFD, which shows as a
    replacement mark; surrogate pairs are joined. The UTF-16 length, and so every entity
    offset, stays the same."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _prefix_within(text: str, limit: int) -> int:
    """The longest prefix length (in code points) whose UTF-16 length is within `limit`."""
    if utf16_len(text) <= limit:
        return len(text)
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def find_cut(text: str, limit: int = MESSAGE_LIMIT) -> int:
    """Where to end the first message of `text`: a paragraph break, else a line break, else a
    sentence end, else a space, else a hard cut. Boundaries in the first quarter are skipped so
    that no message is tiny."""
    end = _prefix_within(text, limit)
    if end >= len(text):
        return len(text)
    window = text[:end]
    floor = end // 4
    paragraph = window.rfind("\n\n")
    if paragraph > floor:
        return paragraph + 2
    line = window.rfind("\n")
    if line > floor:
        return line + 1
    sentences = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() > floor]
    if sentences:
        return sentences[-1]
    space = max(window.rfind(" "), window.rfind("\t"))
    if space > floor:
        return space + 1
    return end


def open_fence(markdown: str) -> str | None:
    """The opening line of a ``` code block that `markdown` leaves unclosed, if any."""
    opening: str | None = None
    for match in _FENCE.finditer(markdown):
        opening = match.group().strip() if opening is None else None
    if opening is not None and len(opening) > 32:  # not a language name: keep the block only
        return "```"
    return opening


def next_piece(text: str, limit: int = MESSAGE_LIMIT) -> tuple[str, int, str]:
    """The first message of `text` (trimmed), how many characters of `text` it takes, and the
    code-fence line the rest must start with: a code block cut in two is closed at the end of
    one message and opened again in the next, so the converter never sees half a block."""
    cut = find_cut(text, limit - len(FENCE_CLOSE))
    piece = text[:cut].strip()
    fence = open_fence(piece)
    if fence is None:
        return piece, cut, ""
    while cut < len(text) and text[cut] == "\n":  # indentation inside the block is kept
        cut += 1
    return piece + FENCE_CLOSE, cut, fence + "\n"


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split into pieces that each fit one Telegram message; whitespace at the cuts is dropped."""
    pieces: list[str] = []
    rest = text.strip()
    while rest:
        if utf16_len(rest) <= limit:
            pieces.append(rest)
            break
        piece, used, carry = next_piece(rest, limit)
        if piece:
            pieces.append(piece)
        rest = carry + rest[used:] if carry else rest[used:].lstrip()
    return pieces


def to_html(markdown: str) -> str:
    """The model's Markdown as Telegram HTML; the converter closes unfinished markup, so it
    also suits a reply that is still being written."""
    return str(telegram_format(markdown))
