"""/status for admins: model, uptime, queue, totals, recent speed."""

from __future__ import annotations

import time
from datetime import timedelta

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.chat import ChatService
from bot.telegram.texts import Texts


async def on_status(
    message: Message, session: AsyncSession, texts: Texts, chat_service: ChatService, is_admin: bool
) -> None:
    if not is_admin:
        await message.answer(texts.help)
        return
    totals = await chat_service.stats(session)
    speed = chat_service.recent_tokens_per_second
    uptime = timedelta(seconds=int(time.monotonic() - chat_service.started_at))
    await message.answer(
        texts.status.format(
            model=chat_service.model.name,
            uptime=uptime,
            queue=chat_service.waiting,
            users=totals.users,
            conversations=totals.conversations,
            messages=totals.messages,
            tps="—" if speed is None else f"{speed:.1f}",
        )
    )


def build_router() -> Router:
    router = Router(name="status")
    router.message.register(on_status, Command("status"))
    return router
