"""Who may use the bot: ALLOWED_USERS and ADMIN_USERS hold numeric ids or @usernames.

A Telegram username can be given up and taken by someone else, so a listed @username grants
access to the first account seen with it only: the middleware binds the name to that account's
numeric id in the database and passes the names bound to an account as `bound_names`. The
account keeps access after a rename; a later holder of the name gets nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
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

    def contains(self, user_id: int, bound_names: Collection[str] = ()) -> bool:
        return user_id in self.ids or any(name in self.usernames for name in bound_names)


@dataclass(frozen=True)
class AccessPolicy:
    allowed: UserList
    admins: UserList

    @classmethod
    def from_lists(cls, allowed: Iterable[str], admins: Iterable[str]) -> AccessPolicy:
        return cls(UserList.parse(allowed), UserList.parse(admins))

    @property
    def usernames(self) -> frozenset[str]:
        return self.allowed.usernames | self.admins.usernames

    def is_admin(self, user_id: int, bound_names: Collection[str] = ()) -> bool:
        return self.admins.contains(user_id, bound_names)

    def is_allowed(self, user_id: int, bound_names: Collection[str] = ()) -> bool:
        # Admins are always served; with no ALLOWED_USERS, only they are.
        return self.is_admin(user_id, bound_names) or self.allowed.contains(user_id, bound_names)

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
