"""Middlewares run for every update, in this order: ordering, storage failures, access,
database session, user record."""

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram.types import TelegramObject

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]
