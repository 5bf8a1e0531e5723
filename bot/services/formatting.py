"""Telegram's message limits and the model's Markdown turned into Telegram HTML."""

from __future__ import annotations

import re

from chatgpt_md_converter import telegram_format

# Telegram counts message length in UTF-16 code units after entity parsing.
MESSAGE_LIMIT = 4096

_SENTENCE_END = re.compile(r"[.!?…;](?:[\"»)\]]*)\s+")


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


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


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split into pieces that each fit one Telegram message; whitespace at the cuts is dropped."""
    pieces: list[str] = []
    rest = text.strip()
    while rest:
        cut = find_cut(rest, limit)
        piece = rest[:cut].rstrip()
        if piece:
            pieces.append(piece)
        rest = rest[cut:].lstrip()
    return pieces


def to_html(markdown: str) -> str:
    """The model's Markdown as Telegram HTML; the converter closes unfinished markup, so it
    also suits a reply that is still being written."""
    return str(telegram_format(markdown))
