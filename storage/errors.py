"""The one exception storage raises for input it refuses or rows that do not exist."""

from __future__ import annotations


class StorageError(Exception):
    """Something could not be stored or found; the message is one sentence meant for a log."""
