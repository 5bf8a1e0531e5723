"""Access by @username: each listed name belongs to the first account seen with it.

A renamed account keeps its access; whoever takes a freed (or an admin's) name later gets
nothing by it. Part of the chat core because it writes: the core commits, nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Set

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.username_bindings import UsernameBindingRepository

logger = logging.getLogger(__name__)


async def bound_names(
    sessions: async_sessionmaker[AsyncSession],
    user_id: int,
    username: str | None,
    listed: Set[str],
) -> frozenset[str]:
    """The names in `listed` bound to `user_id`; binds its current name if it is listed and
    nobody has it yet."""
    current = username.lower() if username else None
    async with sessions() as session:
        bindings = UsernameBindingRepository(session)
        names = set(await bindings.names_of(user_id, listed))
        if current is not None and current in listed and current not in names:
            holder = await bindings.bind(current, user_id)
            await session.commit()
            if holder == user_id:
                logger.info("Access: @%s is now bound to the account %d", current, user_id)
                names.add(current)
            else:
                logger.warning(
                    "Access: @%s belongs to the account %d; the account %d now using that "
                    "name gets no access by it",
                    current,
                    holder,
                    user_id,
                )
    return frozenset(names)
