"""Which account each @username of the access lists belongs to (see tables.UsernameBinding)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import StorageError
from storage.tables import UsernameBinding
from storage.validation import check_id, check_text


def _name(username: str) -> str:
    return check_text(username, "username").removeprefix("@").lower()


class UsernameBindingRepository:
    """Takes the caller's session and never commits, like the other repositories."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def names_of(self, user_id: int, among: Iterable[str]) -> frozenset[str]:
        """The names in `among` that are bound to `user_id`."""
        wanted = {_name(name) for name in among}
        if not wanted:
            return frozenset()
        stmt = select(UsernameBinding.username).where(
            UsernameBinding.user_id == check_id(user_id, "user id"),
            UsernameBinding.username.in_(sorted(wanted)),
        )
        return frozenset((await self._session.scalars(stmt)).all())

    async def holder(self, username: str) -> int | None:
        stmt = select(UsernameBinding.user_id).where(UsernameBinding.username == _name(username))
        holder: int | None = await self._session.scalar(stmt)
        return holder

    async def bind(self, username: str, user_id: int) -> int:
        """Bind `username` to `user_id` unless it is bound already; returns whom it is bound to
        (two updates racing to bind the same name both get the winner)."""
        name, user_id = _name(username), check_id(user_id, "user id")
        dialect = self._session.get_bind().dialect.name
        if dialect == "sqlite":
            insert: sqlite.Insert | postgresql.Insert = sqlite.insert(UsernameBinding)
        elif dialect == "postgresql":
            insert = postgresql.insert(UsernameBinding)
        else:
            raise StorageError(
                f"The {dialect} database is not supported; use SQLite or PostgreSQL."
            )
        stmt = insert.values(username=name, user_id=user_id, bound_at=datetime.now(UTC))
        await self._session.execute(stmt.on_conflict_do_nothing(index_elements=["username"]))
        holder = await self.holder(name)
        if holder is None:  # the row was just written or was there already
            raise StorageError(f"The binding of @{name} could not be read back.")
        return holder
