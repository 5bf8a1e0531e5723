"""Groups: when added to one, the bot says how to talk to it there (mention or reply)."""

from __future__ import annotations

from aiogram import Router
from aiogram.enums import ChatType
from aiogram.filters import JOIN_TRANSITION, ChatMemberUpdatedFilter
from aiogram.types import ChatMemberUpdated

from bot.telegram.texts import Texts


async def on_added(event: ChatMemberUpdated, texts: Texts) -> None:
    if event.chat.type in (ChatType.GROUP, ChatType.SUPERGROUP):
        await event.answer(texts.group_hello)


def build_router() -> Router:
    router = Router(name="groups")
    router.my_chat_member.register(on_added, ChatMemberUpdatedFilter(JOIN_TRANSITION))
    return router
