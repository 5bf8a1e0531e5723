"""A stored reply as the chat shows it: formatted as the bot sends it (Markdown to Telegram
HTML, notes in italics), then parsed as Telegram does."""

from __future__ import annotations

from html import escape

from fake_telegram import parse_text

from bot.telegram.formatting import to_html
from bot.telegram.texts import RU


def shown(text: str, notes: list[str]) -> str:
    body = text.strip()
    parts = [to_html(body)] if body else []
    parts += [f"<i>{escape(note)}</i>" for note in notes or ([] if body else [RU.empty_reply])]
    return parse_text("\n\n".join(parts), "HTML", None)[0]
