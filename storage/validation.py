"""Checks run before any SQL, so refused input never leaves half a row behind."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from storage.errors import StorageError
from storage.records import ROLES, STATUSES, Role, Status

# Telegram caps a message at 4096 characters and the bot may store a reply of 20k; this only
# stops runaway input from bloating the database.
MAX_TEXT_CHARS = 1_000_000
_INT64 = range(-(2**63), 2**63)


def check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise StorageError(f"The {what} must be a string, not {type(value).__name__}.")
    if len(value) > MAX_TEXT_CHARS:
        raise StorageError(
            f"The {what} has {len(value):,} characters; at most {MAX_TEXT_CHARS:,} can be stored."
        )
    return value


def check_optional_text(value: object, what: str) -> str | None:
    return None if value is None else check_text(value, what)


def check_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in _INT64:
        raise StorageError(f"The {what} must be a 64-bit integer, not {value!r}.")
    return value


def check_ids(values: Iterable[object], what: str) -> tuple[int, ...]:
    if isinstance(values, str | bytes):
        raise StorageError(f"The {what} must be a sequence of integers, not a string.")
    return tuple(check_id(value, what) for value in values)


def check_role(value: object) -> Role:
    if value not in ROLES:
        raise StorageError(f"The role must be one of {', '.join(ROLES)}, not {value!r}.")
    return cast(Role, value)


def check_status(value: object) -> Status:
    if value not in STATUSES:
        raise StorageError(f"The status must be one of {', '.join(STATUSES)}, not {value!r}.")
    return cast(Status, value)


def check_token_count(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise StorageError(f"The token count must be a non-negative integer, not {value!r}.")
    return value
