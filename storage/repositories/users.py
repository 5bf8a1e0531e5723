"""Users: their names as last seen, their system prompt, /forget."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.records import (
    UserRecord,
)
from storage.repositories._rows import (
    NO_SYNC,
    USER_COLUMNS,
    upsert_insert,
    user_record,
    utc_now,
)
from storage.tables import Conversation, Message, TelegramMessage, User
from storage.validation import (
    check_id,
    check_optional_text,
)


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def upsert(
        self,
        user_id: int,
        *,
        username: str | None,
        first_name: str | None,
        language_code: str | None,
    ) -> UserRecord:
        """Create the user or refresh the names as last seen; the system prompt is kept."""
        user_id = check_id(user_id, "user id")
        values = {
            "username": check_optional_text(username, "username"),
            "first_name": check_optional_text(first_name, "first name"),
            "language_code": check_optional_text(language_code, "language code"),
        }
        now = utc_now()
        stmt = upsert_insert(self._session, User).values(
            id=user_id, created_at=now, updated_at=now, **values
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[User.id], set_={**values, "updated_at": now}
        )
        row = (await self._session.execute(stmt.returning(*USER_COLUMNS))).one()
        return user_record(row)

    async def get(self, user_id: int) -> UserRecord | None:
        stmt = select(*USER_COLUMNS).where(User.id == check_id(user_id, "user id"))
        row = (await self._session.execute(stmt)).one_or_none()
        return None if row is None else user_record(row)

    async def set_system_prompt(self, user_id: int, prompt: str | None) -> None:
        """None returns the user to the model's default prompt."""
        user_id = check_id(user_id, "user id")
        prompt = check_optional_text(prompt, "system prompt")
        now = utc_now()
        stmt = upsert_insert(self._session, User).values(
            id=user_id, system_prompt=prompt, created_at=now, updated_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[User.id], set_={"system_prompt": prompt, "updated_at": now}
        )
        await self._session.execute(stmt)

    async def forget(self, user_id: int) -> None:
        """Delete the user with every conversation and message, in every chat."""
        user_id = check_id(user_id, "user id")
        conversations = select(Conversation.id).where(Conversation.user_id == user_id)
        messages = select(Message.id).where(Message.conversation_id.in_(conversations))
        # Explicit, child first: correct even where foreign keys are not enforced.
        for stmt in (
            delete(TelegramMessage).where(TelegramMessage.message_id.in_(messages)),
            delete(Message).where(Message.conversation_id.in_(conversations)),
            delete(Conversation).where(Conversation.user_id == user_id),
            delete(User).where(User.id == user_id),
        ):
            await self._session.execute(stmt.execution_options(**NO_SYNC))
