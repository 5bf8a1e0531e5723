"""With several bot processes on one database (PostgreSQL), each runs this: it reads the
stops asked for in any process while replies run here, and it picks up what a process that
died or shut down left behind: its replies stored but not sent, and those cut while written
(kept as `partial`), are sent to their chats with the note their status tells, and its
waiting messages are answered here, oldest first, in their chats' turn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from bot.telegram.restart import answer_logged, send_unsent
from storage.errors import StorageError

if TYPE_CHECKING:
    from bot.telegram.app import BotApp

logger = logging.getLogger(__name__)

STOP_POLL = 0.25  # seconds: a /stop in another process ends a reply here this soon
SWEEP_EVERY = 1.0  # seconds between looks for work of gone processes


class Sweeper:
    def __init__(
        self, app: BotApp, *, every: float = SWEEP_EVERY, stop_poll: float = STOP_POLL
    ) -> None:
        self._app = app
        self._every = every
        self._stop_poll = stop_poll
        self._loops: list[asyncio.Task[None]] = []
        self._answers: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._watch_stops(), name="stops"),
            asyncio.create_task(self._sweep_loop(), name="sweep"),
        ]

    async def close(self) -> None:
        """Take no more orphans; the answers begun go on (shutdown waits for them)."""
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loops = []

    async def sweep(self) -> int:
        """One look: returns how many waiting messages this process took on."""
        services = self._app.services
        async with services.sessions() as session:
            # Sent one by one, oldest first: the chat's next reply waits until each is sent.
            unsent = await services.chat.undelivered_replies(session)
            try:
                for reply, user, chat_id in unsent:
                    await send_unsent(self._app, reply, user, chat_id)
            finally:  # claimed and not reached (the sweep was cut short): let them go
                for reply, _, _ in unsent:
                    await services.chat.not_delivered(reply.id)
            waiting = await services.chat.waiting_messages(session)
            await services.chat.coordination.prune(session)
        if waiting:
            logger.info("Answering %d messages a gone process left", len(waiting))
        for item in waiting:
            task = asyncio.create_task(answer_logged(self._app, *item))
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)
        await asyncio.sleep(0)  # let each take its place in its chat's line
        return len(waiting)

    async def _sweep_loop(self) -> None:
        seen = self._app.services.chat.coordination.orphans_seen
        while True:
            seen.clear()
            try:
                await self.sweep()
            except (SQLAlchemyError, StorageError, RuntimeError) as exc:
                logger.error("sweep failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(seen.wait(), self._every)

    async def _watch_stops(self) -> None:
        chat = self._app.services.chat
        while True:
            if not chat.idle:
                try:
                    await chat.apply_remote_stops()
                except (SQLAlchemyError, StorageError) as exc:
                    logger.error("reading stops failed: %s", exc)
            await asyncio.sleep(self._stop_poll)
