"""Who may use the bot: ALLOWED_USERS and ADMIN_USERS hold numeric ids or @usernames."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserList:
    ids: frozenset[int]
    usernames: frozenset[str]  # lower case, without "@"

    @classmethod
    def parse(cls, entries: Iterable[str]) -> UserList:
        """Accept what a person types into an environment file: `123, @Name, name, -100`."""
        ids: set[int] = set()
        names: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                ids.add(int(entry))
            except ValueError:
                name = entry.removeprefix("@").strip().lower()
                if not name or not all(ch.isalnum() or ch == "_" for ch in name):
                    raise ValueError(
                        f"{raw!r} is neither a numeric Telegram id nor a @username"
                    ) from None
                names.add(name)
        return cls(frozenset(ids), frozenset(names))

    def __bool__(self) -> bool:
        return bool(self.ids or self.usernames)

    def contains(self, user_id: int, username: str | None) -> bool:
        if user_id in self.ids:
            return True
        return username is not None and username.lower() in self.usernames


@dataclass(frozen=True)
class AccessPolicy:
    allowed: UserList
    admins: UserList

    @classmethod
    def from_lists(cls, allowed: Iterable[str], admins: Iterable[str]) -> AccessPolicy:
        return cls(UserList.parse(allowed), UserList.parse(admins))

    def is_admin(self, user_id: int, username: str | None) -> bool:
        return self.admins.contains(user_id, username)

    def is_allowed(self, user_id: int, username: str | None) -> bool:
        # Admins are always served; with no ALLOWED_USERS, only they are.
        return self.is_admin(user_id, username) or self.allowed.contains(user_id, username)

    def log_summary(self) -> None:
        if not self.allowed and not self.admins:
            logger.warning(
                "Neither ALLOWED_USERS nor ADMIN_USERS is set: the bot serves nobody and "
                "tells each person their id; add yours to ADMIN_USERS."
            )
        elif not self.allowed:
            logger.info(
                "ALLOWED_USERS is not set: only the %d admin entries are served",
                len(self.admins.ids) + len(self.admins.usernames),
            )
        else:
            logger.info(
                "Access: %d allowed and %d admin entries",
                len(self.allowed.ids) + len(self.allowed.usernames),
                len(self.admins.ids) + len(self.admins.usernames),
            )
