"""Logging set-up: one line per record on stderr, with syslog priorities under systemd."""

from __future__ import annotations

import logging
import os
import sys
from typing import ClassVar


class JournalFormatter(logging.Formatter):
    """Under systemd, a `<N>` prefix carries each record's syslog priority into the journal,
    so that `journalctl -p warning` shows the problems only."""

    PRIORITIES: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
        logging.CRITICAL: 2,
    }

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"


# The project's own loggers: they never put message text into a record unless told to.
OWN_LOGGERS = frozenset(("bot", "models", "storage", "__main__"))


class ThirdPartyDebugFilter(logging.Filter):
    """Drops DEBUG records of every other library. Their DEBUG output quotes what they handle:
    aiosqlite logs each statement with its parameters (users' text), aiohttp and aiogram the
    requests and answers. Kept only with LOG_MESSAGE_TEXT=true."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO or record.name.split(".")[0] in OWN_LOGGERS


def setup_logging(level: str, *, log_message_text: bool = False) -> None:
    # One line per record on stderr: journald keeps it readable and adds the time itself.
    handler = logging.StreamHandler(sys.stderr)
    text_format = "%(levelname)s %(name)s: %(message)s"
    # systemd sets JOURNAL_STREAM when stderr is connected to the journal.
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    handler.setFormatter((JournalFormatter if journal else logging.Formatter)(text_format))
    if not log_message_text:
        handler.addFilter(ThirdPartyDebugFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # aiogram logs every handled update at INFO: noise in the journal.
    logging.getLogger("aiogram.event").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    if not log_message_text:
        # SQLAlchemy's echo logs statements at INFO and, where parameters are not hidden,
        # their values; and a filter alone would not stop the work of formatting them.
        for name in ("sqlalchemy.engine", "sqlalchemy.pool", "aiosqlite"):
            logging.getLogger(name).setLevel(logging.WARNING)
