"""When a group message is meant for the bot: it mentions the bot or replies to it."""

from __future__ import annotations

from typing import Any

from aiogram import Bot
from aiogram.enums import ChatType, MessageEntityType
from aiogram.filters import BaseFilter
from aiogram.types import Message


async def is_addressed(message: Message, bot: Bot) -> bool:
    if message.chat.type == ChatType.PRIVATE:
        return True
    me = await bot.me()
    reply = message.reply_to_message
    if reply is not None and reply.from_user is not None and reply.from_user.id == me.id:
        return True
    return mention_of(message, me.username) is not None


def mention_of(message: Message, username: str | None) -> tuple[int, int] | None:
    """(offset, length) of an @mention of the bot, in Python string indices."""
    text = message.text or message.caption
    if not username or not text:
        return None
    wanted = f"@{username}".lower()
    for entity in message.entities or message.caption_entities or []:
        if entity.type != MessageEntityType.MENTION:
            continue
        # Entity offsets count UTF-16 code units; surrogatepass, unlike aiogram's
        # extract_from, also takes a text with a lone surrogate, which a user may send.
        units = text.encode("utf-16-le", "surrogatepass")
        start_unit, end_unit = entity.offset * 2, (entity.offset + entity.length) * 2
        piece = units[start_unit:end_unit].decode("utf-16-le", "surrogatepass")
        if piece.lower() == wanted:
            start = text.find(piece)
            return start, len(piece)
    return None


async def text_for_bot(message: Message, bot: Bot) -> str:
    """The message text without the bot's @mention."""
    text = message.text or ""
    span = mention_of(message, (await bot.me()).username)
    if span is None:
        return text.strip()
    start, length = span
    return (text[:start] + text[start + length :]).strip()


class Addressed(BaseFilter):
    """Private messages, or group messages that mention or reply to the bot."""

    async def __call__(self, message: Message, bot: Bot) -> bool | dict[str, Any]:
        return await is_addressed(message, bot)
