"""/system: show the system prompt, set the user's own, or restore the default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.chat import ChatService

RESET_WORDS = {"reset", "default", "сброс", "сбросить"}
# A custom system prompt must leave at least this many tokens for the user's message.
MIN_MESSAGE_ROOM = 32

SystemAnswerKind = Literal["current", "default", "reset", "too_long", "set"]


@dataclass(frozen=True)
class SystemAnswer:
    kind: SystemAnswerKind
    prompt: str = ""
    tokens: int = 0
    budget: int = 0


async def system_command(
    service: ChatService, session: AsyncSession, user_id: int, argument: str
) -> SystemAnswer:
    """What `/system <argument>` does; each front end words the answer."""
    argument = argument.strip()
    if not argument:
        user = await service.user(session, user_id)
        if user is not None and user.system_prompt:
            return SystemAnswer("current", user.system_prompt)
        return SystemAnswer("default", service.default_system_prompt or "—")
    if argument.lower() in RESET_WORDS:
        await service.set_system_prompt(session, user_id, None)
        return SystemAnswer("reset")
    window = service.model.window
    tokens = window.system_overhead(argument)
    if tokens + MIN_MESSAGE_ROOM > window.budget:
        return SystemAnswer("too_long", tokens=tokens, budget=window.budget - MIN_MESSAGE_ROOM)
    await service.set_system_prompt(session, user_id, argument)
    return SystemAnswer("set")
