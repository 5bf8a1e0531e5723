"""`domovoy chat`: talk to the same model, window, templates and storage in the terminal.

The owner is a local user (id 0) with the same commands as in Telegram: /reset, /new, /chats
(numbered: `/chats 2` continues the second, `/chats del 2` deletes it), /system, /stop, plus
/quit. Ctrl-C stops a reply without quitting; at the prompt it quits, as does
Ctrl-D. Lines typed while a reply is written wait for it, except /stop and /quit.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import signal
import sys
import threading
from collections import deque
from typing import TYPE_CHECKING, TextIO

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.core import conversations
from bot.core.chat import ChatService
from bot.core.system_prompt import system_command
from bot.core.turn import Turn
from models.errors import ModelError
from storage.errors import StorageError

if TYPE_CHECKING:
    from bot.telegram.texts import Texts

LOCAL_USER = 0  # Telegram ids are positive, so 0 never collides with a real user
QUIT = {"/quit", "/exit"}
STOP = "/stop"


class _Reply(enum.Enum):
    DONE = "done"


class ConsoleReply:
    """Prints the reply as it grows: only the new characters each time."""

    def __init__(self, out: TextIO, texts: Texts) -> None:
        self._out = out
        self._texts = texts
        self._printed = 0
        self._status_shown = False

    async def show_queue(self, ahead: int) -> None:
        if not self._status_shown:
            self._write(f"[{self._texts.queue_position.format(ahead=ahead)}]\n")
            self._status_shown = True

    async def show_your_turn(self) -> None:
        return None

    async def show_engine_wait(self) -> None:
        self._write(f"[{self._texts.engine_wait}]\n")

    @property
    def message_ids(self) -> list[int]:
        return []

    async def update(self, text: str) -> None:
        if len(text) > self._printed:
            self._write(text[self._printed :])
            self._printed = len(text)

    async def finish(self, text: str, notes: list[str]) -> list[int]:
        await self.update(text)
        tail = "".join(f"\n[{note}]" for note in notes)
        self._write(f"{tail}\n\n")
        return []

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


def _read_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    # A daemon thread: a blocked read must never keep the program from exiting.
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\n"))
    loop.call_soon_threadsafe(queue.put_nowait, None)


class Console:
    def __init__(
        self,
        service: ChatService,
        sessions: async_sessionmaker[AsyncSession],
        texts: Texts,
        out: TextIO,
    ) -> None:
        self._service = service
        self._sessions = sessions
        self._texts = texts
        self._out = out
        self._reply: asyncio.Task[None] | None = None
        self._quit = asyncio.Event()
        self._interactive = sys.stdin.isatty()

    def _say(self, text: str) -> None:
        self._out.write(f"{text}\n\n")
        self._out.flush()

    def _interrupt(self) -> None:
        if self._reply is not None and not self._reply.done():
            self._service.stop(LOCAL_USER, LOCAL_USER)
        else:
            self._quit.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=_read_lines, args=(loop, lines), daemon=True).start()
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, self._interrupt)
        async with self._sessions() as session:
            await self._service.touch_user(
                session, LOCAL_USER, username=None, first_name="console", language_code=None
            )
        self._say(self._texts.console_help)
        waiting: deque[str] = deque()
        end_of_input = False
        try:
            while not self._quit.is_set():
                if waiting:
                    line: str | None = waiting.popleft()
                elif end_of_input:
                    break
                else:
                    line = await self._next_line(lines)
                if line is None or line.strip() in QUIT:
                    break
                if line.strip() == STOP:
                    self._say(self._texts.stop_nothing)
                    continue
                self._reply = asyncio.create_task(self._handle(line))
                while not self._reply.done() and not end_of_input:
                    extra = await self._next(lines, until=self._reply)
                    if extra is _Reply.DONE:
                        break
                    if extra is None and not self._quit.is_set():
                        end_of_input = True  # piped input: finish what was asked, then leave
                    elif extra is None or extra.strip() in QUIT:
                        self._service.stop(LOCAL_USER, LOCAL_USER)
                        self._quit.set()
                    elif extra.strip() == STOP:
                        self._service.stop(LOCAL_USER, LOCAL_USER)
                    else:
                        waiting.append(extra)
                await self._reply
        finally:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signal.SIGINT)

    async def _next_line(self, lines: asyncio.Queue[str | None]) -> str | None:
        if self._interactive:
            self._out.write("› ")
            self._out.flush()
        line = await self._next(lines)
        return None if isinstance(line, _Reply) else line

    async def _next(
        self, lines: asyncio.Queue[str | None], until: asyncio.Task[None] | None = None
    ) -> str | _Reply | None:
        """The next input line; None at the end of input or on quit; `_Reply.DONE` when the
        reply `until` finishes first."""
        getter = asyncio.create_task(lines.get())
        quitter = asyncio.create_task(self._quit.wait())
        waits: set[asyncio.Future[object]] = {getter, quitter}  # type: ignore[arg-type]
        if until is not None:
            waits.add(until)  # type: ignore[arg-type]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        quitter.cancel()
        if getter.done():
            return getter.result()
        getter.cancel()
        if until is not None and until.done() and not self._quit.is_set():
            return _Reply.DONE
        return None

    async def _handle(self, line: str) -> None:
        text = line.strip()
        if not text:
            return
        try:
            await self._command_or_reply(text)
        except (ModelError, StorageError) as exc:
            self._say(f"[{exc}]")

    async def _command_or_reply(self, text: str) -> None:
        async with self._sessions() as session:
            if text in ("/reset", "/new"):
                await self._service.reset(session, LOCAL_USER, LOCAL_USER)
                self._say(self._texts.reset_done if text == "/reset" else self._texts.new_done)
            elif text == "/chats" or text.startswith("/chats "):
                await self._chats(session, text.removeprefix("/chats").split())
            elif text == "/system" or text.startswith("/system "):
                await self._system(session, text.removeprefix("/system").strip())
            elif re.fullmatch(r"/[A-Za-z_]+", text.split()[0]):
                # /help and commands the console does not have are not for the model.
                self._say(self._texts.console_help)
            else:
                user = await self._service.user(session, LOCAL_USER)
                assert user is not None
                reply = ConsoleReply(self._out, self._texts)
                outcome = await self._service.reply(session, Turn(user, LOCAL_USER, text), reply)
                if not outcome.shows_nothing:
                    try:
                        await reply.finish(outcome.text, self._texts.notes_for(outcome))
                    except BaseException:
                        await self._service.not_delivered(outcome.bot_message_id)
                        raise
                    # Printed: sent, as far as a terminal goes.
                    await self._service.delivered(session, outcome.bot_message_id, [])

    async def _chats(self, session: AsyncSession, words: list[str]) -> None:
        """List the conversations, or continue (`N`) or delete (`del N`) the N-th listed."""
        found = await conversations.recent(session, LOCAL_USER, LOCAL_USER)
        texts = self._texts
        number = words[-1] if words else ""
        if not words or not number.isdigit() or not 1 <= int(number) <= len(found):
            lines = [
                f"{n}. {'• ' if s.current else ''}{conversations.first_words(s.first_message)}"
                f" · {s.last_at:%d.%m}"
                for n, s in enumerate(found, 1)
            ]
            self._say("\n".join([texts.chats_title, *lines]) if found else texts.chats_empty)
            return
        chosen = found[int(number) - 1]
        if words[0] == "del":
            await conversations.delete(self._service, session, LOCAL_USER, LOCAL_USER, chosen.id)
            self._say(texts.chats_deleted)
        elif await conversations.switch(session, LOCAL_USER, LOCAL_USER, chosen.id):
            title = conversations.first_words(chosen.first_message)
            self._say(texts.chats_switched.format(title=title))

    async def _system(self, session: AsyncSession, argument: str) -> None:
        answer = await system_command(self._service, session, LOCAL_USER, argument)
        self._say(self._texts.system_answer(answer))
