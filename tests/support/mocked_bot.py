"""aiogram's mocked-bot pattern for the fast test tier: a Bot whose session records every
Bot API method instead of sending it, and answers with a plausible result of the method's
own return type."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiogram import Bot
from aiogram.client.session.base import BaseSession
from aiogram.methods import (
    EditMessageText,
    GetMe,
    SendMessage,
    TelegramMethod,
)
from aiogram.types import Chat, Message, Update, User

T = TypeVar("T")
BOT_USER = User(id=42, is_bot=True, first_name="Domovoy", username="domovoy_bot")


class RecordingSession(BaseSession):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[TelegramMethod[Any]] = []
        self._ids = itertools.count(1000)
        # Set: every sendMessage waits for it (the process "dies" before its message goes);
        # `send_held` says one is waiting.
        self.hold_sends: asyncio.Event | None = None
        self.send_held = asyncio.Event()
        self.on_send: Callable[[str], None] | None = None  # told each text sent

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[T],
        timeout: int | None = None,  # noqa: ASYNC109 - aiogram's signature
    ) -> T:
        if isinstance(method, SendMessage) and self.hold_sends is not None:
            self.send_held.set()
            await self.hold_sends.wait()
        self.requests.append(method)
        if isinstance(method, SendMessage) and self.on_send is not None:
            self.on_send(method.text)
        if isinstance(method, GetMe):
            return BOT_USER  # type: ignore[return-value]
        if isinstance(method, SendMessage | EditMessageText):
            chat_id = int(method.chat_id)
            return Message(  # type: ignore[return-value]
                message_id=getattr(method, "message_id", None) or next(self._ids),
                date=datetime.now(UTC),
                chat=Chat(id=chat_id, type="private" if chat_id > 0 else "supergroup"),
                from_user=BOT_USER,
                text=method.text,
            )
        return True  # type: ignore[return-value]

    async def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,  # noqa: ASYNC109 - aiogram's signature
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        yield b""

    async def close(self) -> None:
        return None

    def texts(self, chat_id: int) -> list[str]:
        """What the bot sent to the chat with sendMessage, in order."""
        return [
            m.text
            for m in self.requests
            if isinstance(m, SendMessage) and int(m.chat_id) == chat_id
        ]


class MockedBot(Bot):
    def __init__(self) -> None:
        super().__init__("42:TEST-TOKEN-FOR-THE-FAST-TIER-0123456789", session=RecordingSession())
        self._me = BOT_USER

    @property
    def recorder(self) -> RecordingSession:
        assert isinstance(self.session, RecordingSession)
        return self.session


_update_ids = itertools.count(1)


def text_update(user_id: int, text: str, *, chat_id: int | None = None) -> Update:
    """A message as Telegram delivers it, from a user in their private chat (or `chat_id`)."""
    chat = chat_id if chat_id is not None else user_id
    user = User(id=user_id, is_bot=False, first_name=f"user{user_id}", language_code="ru")
    update_id = next(_update_ids)
    return Update(
        update_id=update_id,
        message=Message(
            message_id=update_id,
            date=datetime.now(UTC),
            chat=Chat(id=chat, type="private" if chat == user_id else "group"),
            from_user=user,
            text=text,
        ),
    )
