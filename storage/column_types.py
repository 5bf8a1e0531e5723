"""Column types that store every Python string and every datetime exactly, on any backend."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, Text
from sqlalchemy.types import TypeDecorator

# SQLite's driver cannot encode lone surrogates and PostgreSQL refuses NUL in text, yet both can
# arrive from Telegram. Such characters, and the escape character itself, are stored as
# ESCAPE + four hex digits; every other text (nearly all of it) is stored untouched, so an
# operator reading the database sees plain text.
ESCAPE = "\x1a"  # SUBSTITUTE: a control character no one types in a chat
_NEEDS_ESCAPE = re.compile("[\x00\x1a\ud800-\udfff]")
_ESCAPED = re.compile("\x1a([0-9a-f]{4})")


def escape_text(value: str) -> str:
    if _NEEDS_ESCAPE.search(value) is None:
        return value
    return _NEEDS_ESCAPE.sub(lambda match: f"{ESCAPE}{ord(match.group()):04x}", value)


def unescape_text(value: str) -> str:
    if ESCAPE not in value:
        return value
    return _ESCAPED.sub(lambda match: chr(int(match.group(1), 16)), value)


class ExactText(TypeDecorator[str]):
    """Unbounded text whose round trip is exact for any Python `str`."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else escape_text(value)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> str | None:
        return None if value is None else unescape_text(str(value))


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes; SQLite keeps no offset, so UTC is implied there."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
