"""Messages of a conversation and the Telegram messages that carried them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import StorageError
from storage.records import (
    MessageRecord,
    Role,
    Status,
    UserRecord,
)
from storage.repositories._rows import (
    NO_SYNC,
    USER_COLUMNS,
    history_query,
    message_records,
    messages_query,
    user_record,
    utc_now,
)
from storage.tables import Conversation, Message, TelegramMessage, User
from storage.validation import (
    check_id,
    check_ids,
    check_optional_text,
    check_role,
    check_status,
    check_text,
    check_token_count,
)


class MessageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(
        self,
        conversation_id: int,
        role: Role,
        text: str,
        *,
        status: Status = "complete",
        n_tokens: int | None = None,
        telegram_message_ids: Sequence[int] = (),
        model: str | None = None,
        reply_to: int | None = None,
        delivered: bool = True,
    ) -> MessageRecord:
        """`reply_to`: for a bot reply, the user message of this conversation it answers.
        `delivered`: False for a reply the front end has yet to send (see `delivered`)."""
        conversation_id = check_id(conversation_id, "conversation id")
        role = check_role(role)
        text = check_text(text, "message text")
        status = check_status(status)
        n_tokens = check_token_count(n_tokens)
        carriers = check_ids(telegram_message_ids, "Telegram message id")
        model = check_optional_text(model, "model name")
        exists = await self._session.scalar(
            select(Conversation.id).where(Conversation.id == conversation_id)
        )
        if exists is None:
            raise StorageError(f"Conversation {conversation_id} does not exist.")
        if reply_to is not None:
            await self._check_question(conversation_id, role, check_id(reply_to, "message id"))
        created_at = utc_now()
        values: dict[str, object] = {
            "conversation_id": conversation_id,
            "role": role,
            "text": text,
            "status": status,
            "n_tokens": n_tokens,
            "model": model,
            "created_at": created_at,
        }
        if reply_to is not None:  # left out otherwise: tests write rows of older schemas too
            values["reply_to"] = reply_to
        if not delivered:  # likewise
            values["delivered"] = False
        stmt = insert(Message).values(**values).returning(Message.id)
        message_id = (await self._session.execute(stmt)).scalar_one()
        await self._insert_carriers(message_id, carriers)
        return MessageRecord(
            id=message_id,
            conversation_id=conversation_id,
            role=role,
            text=text,
            status=status,
            n_tokens=n_tokens,
            telegram_message_ids=carriers,
            model=model,
            created_at=created_at,
            reply_to=reply_to,
            delivered=delivered,
        )

    async def update(
        self,
        message_id: int,
        *,
        text: str | None = None,
        status: Status | None = None,
        n_tokens: int | None = None,
        telegram_message_ids: Sequence[int] | None = None,
        model: str | None = None,
    ) -> None:
        """Change the given fields (None leaves a field as it is); Telegram ids are replaced."""
        message_id = check_id(message_id, "message id")
        values: dict[str, object] = {}
        if text is not None:
            values["text"] = check_text(text, "message text")
        if status is not None:
            values["status"] = check_status(status)
        if n_tokens is not None:
            values["n_tokens"] = check_token_count(n_tokens)
        if model is not None:
            values["model"] = check_optional_text(model, "model name")
        carriers = (
            None
            if telegram_message_ids is None
            else check_ids(telegram_message_ids, "Telegram message id")
        )
        if values:
            stmt = (
                update(Message)
                .where(Message.id == message_id)
                .values(**values)
                .returning(Message.id)
                .execution_options(**NO_SYNC)
            )
            found = (await self._session.execute(stmt)).scalar_one_or_none()
        else:
            found = await self._session.scalar(select(Message.id).where(Message.id == message_id))
        if found is None:
            raise StorageError(f"Message {message_id} does not exist.")
        if carriers is not None:
            await self._session.execute(
                delete(TelegramMessage)
                .where(TelegramMessage.message_id == message_id)
                .execution_options(**NO_SYNC)
            )
            await self._insert_carriers(message_id, carriers)

    async def delivered(self, reply_id: int, telegram_message_ids: Sequence[int]) -> bool:
        """The reply reached its chat in these Telegram messages (none: its ids stay as they
        are). False when the row is gone (a /forget came first): nothing is written then."""
        carriers = check_ids(telegram_message_ids, "Telegram message id")
        stmt = (
            update(Message)
            .where(Message.id == check_id(reply_id, "message id"))
            .values(delivered=True)
            .returning(Message.id)
            .execution_options(**NO_SYNC)
        )
        # The update locks the row: a /forget deleting it waits until this commits.
        if (await self._session.execute(stmt)).scalar_one_or_none() is None:
            return False
        if carriers:
            await self.update(reply_id, telegram_message_ids=carriers)
        return True

    async def get(self, message_id: int) -> MessageRecord | None:
        stmt = messages_query().where(Message.id == check_id(message_id, "message id"))
        records = message_records(await self._session.execute(stmt))
        return records[0] if records else None

    async def history(self, conversation_id: int) -> list[MessageRecord]:
        """The conversation's messages, oldest first, in one indexed query."""
        stmt = history_query(check_id(conversation_id, "conversation id"))
        return message_records(await self._session.execute(stmt))

    async def find_by_telegram_id(
        self, conversation_id: int, telegram_message_id: int
    ) -> MessageRecord | None:
        """The stored message that a Telegram message of this conversation carried."""
        stmt = (
            select(Message.id)
            .join(TelegramMessage, TelegramMessage.message_id == Message.id)
            .where(
                Message.conversation_id == check_id(conversation_id, "conversation id"),
                TelegramMessage.telegram_message_id
                == check_id(telegram_message_id, "Telegram message id"),
            )
            .order_by(Message.id.desc())
            .limit(1)
        )
        message_id = await self._session.scalar(stmt)
        return None if message_id is None else await self.get(message_id)

    async def mark_pending_as_partial(self) -> int:
        """At start-up: replies left `pending` by a crashed or killed process become `partial`
        (kept, never dropped). Returns how many there were. Only for a single bot process.
        Messages left `pending` stay so: the bot answers them after the restart."""
        replies = (
            update(Message)
            .where(Message.role == "bot", Message.status == "pending")
            .values(status="partial")
            .returning(Message.id)
            .execution_options(**NO_SYNC)
        )
        return len((await self._session.execute(replies)).all())

    async def mark_waiting(self, message_ids: Sequence[int]) -> None:
        """Messages the bot had no time to answer: `pending` until a restart answers them.
        Ids that no longer exist (a /forget) are passed over."""
        ids = [check_id(message_id, "message id") for message_id in message_ids]
        stmt = (
            update(Message)
            .where(Message.id.in_(ids), Message.role == "user")
            .values(status="pending")
            .execution_options(**NO_SYNC)
        )
        await self._session.execute(stmt)

    async def unanswered(self) -> list[tuple[MessageRecord, UserRecord, int]]:
        """Messages accepted and never answered (a shutdown came first), oldest first, with
        their user and chat id."""
        stmt = (
            select(Message.id, Conversation.chat_id, *USER_COLUMNS)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .join(User, User.id == Conversation.user_id)
            .where(Message.role == "user", Message.status == "pending")
            .order_by(Message.id)
        )
        found = []
        for row in (await self._session.execute(stmt)).all():
            record = await self.get(row[0])
            if record is not None:
                found.append((record, user_record(row[2:]), row[1]))
        return found

    async def _check_question(self, conversation_id: int, role: Role, reply_to: int) -> None:
        # The transcript would otherwise show a reply after a message it never answered.
        question = (
            await self._session.execute(
                select(Message.conversation_id, Message.role).where(Message.id == reply_to)
            )
        ).one_or_none()
        if role != "bot" or question is None or tuple(question) != (conversation_id, "user"):
            raise StorageError(
                f"Only a bot reply can answer a message, and only a user message of its own "
                f"conversation; message {reply_to} is not one."
            )

    async def _insert_carriers(self, message_id: int, carriers: tuple[int, ...]) -> None:
        if carriers:
            await self._session.execute(
                insert(TelegramMessage),
                [
                    {"message_id": message_id, "position": position, "telegram_message_id": tid}
                    for position, tid in enumerate(carriers)
                ],
            )
