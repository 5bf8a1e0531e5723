"""One router per feature; `build_routers()` gives fresh ones in the order they must match."""

from __future__ import annotations

from aiogram import Router

from bot.telegram.handlers import (
    chat,
    conversations,
    forget,
    groups,
    media,
    regenerate,
    reset,
    start,
    status,
    stop,
    stop_button,
    system,
)


def build_routers() -> list[Router]:
    # Commands first, then non-text media, then free text (the catch-all).
    modules = (
        start,
        reset,
        conversations,
        system,
        stop,
        stop_button,
        forget,
        regenerate,
        status,
        groups,
        media,
        chat,
    )
    return [module.build_router() for module in modules]
