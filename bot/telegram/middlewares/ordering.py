"""Give each update of a conversation its place in line before anything else runs, and let
shutdown wait for every update being handled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import Chat, TelegramObject, User

from bot.core.chat import ChatService
from bot.core.ordering import TurnOrder, take_place
from bot.telegram.middlewares import Handler


class OrderingMiddleware(BaseMiddleware):
    """Registered first: its ticket must be taken before the update's task first awaits."""

    def __init__(self, order: TurnOrder, service: ChatService) -> None:
        self._order = order
        self._service = service

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User | None = data.get("event_from_user")
        chat: Chat | None = data.get("event_chat")
        with self._service.delivering():
            if user is None or chat is None:
                return await handler(event, data)
            ticket = take_place(self._order, user.id, chat.id)
            data["ticket"] = ticket
            # A webhook answers Telegram once the update's place is released: its message is
            # stored by then (ChatService.reply), so Telegram's retry covers everything before.
            accepted: Callable[[], None] | None = data.get("on_accepted")
            if accepted is not None:
                ticket.conversation.on_release(accepted)
            try:
                return await handler(event, data)
            finally:
                ticket.release()
