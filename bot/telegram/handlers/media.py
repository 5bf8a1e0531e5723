"""Photos, voice, stickers, files...: only text is understood."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.types import Message

from bot.telegram.filters import Addressed
from bot.telegram.texts import Texts

NOT_TEXT = (
    F.photo
    | F.voice
    | F.sticker
    | F.document
    | F.video
    | F.audio
    | F.video_note
    | F.animation
    | F.location
    | F.contact
    | F.poll
    | F.dice
)


async def on_media(message: Message, texts: Texts) -> None:
    await message.answer(texts.only_text)


def build_router() -> Router:
    router = Router(name="media")
    router.message.register(on_media, NOT_TEXT, Addressed())
    return router
