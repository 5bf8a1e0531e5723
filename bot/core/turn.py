"""What one conversation turn takes in and gives back, shared by every front end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from models.prompt.templates import ChatMessage
from storage.records import MessageRecord, Status, UserRecord


class ReplySink(Protocol):
    """Where a reply is shown while it is written: a Telegram chat or the terminal. Each
    front end words the queue lines itself."""

    async def show_queue(self, ahead: int) -> None: ...

    async def show_your_turn(self) -> None: ...

    async def show_engine_wait(self) -> None:
        """No engine server answers (ENGINE=remote): the reply waits for one."""
        ...

    async def update(self, text: str) -> None: ...

    @property
    def message_ids(self) -> list[int]:
        """Chat messages that show the reply so far (none for drafts or a terminal)."""
        ...


def conversation_key(user_id: int, chat_id: int) -> str:
    """A user's line in a chat: replies there run one at a time, /stop cancels them."""
    return f"{user_id}:{chat_id}"


def state_key(user_id: int, chat_id: int, conversation_id: int) -> str:
    """The model state kept for one stored conversation: switching back to it finds it again."""
    return f"{conversation_key(user_id, chat_id)}:{conversation_id}"


@dataclass(frozen=True)
class Turn:
    """One message of a user to answer."""

    user: UserRecord
    chat_id: int
    text: str
    telegram_id: int | None = None

    @property
    def key(self) -> str:
        return conversation_key(self.user.id, self.chat_id)


@dataclass(frozen=True)
class Outcome:
    """How a turn ended; each front end renders the flags in its own words."""

    text: str = ""
    status: Status = "partial"
    bot_message_id: int | None = None
    stopped: bool = False  # the user stopped it (/stop, the Stop button)
    interrupted: bool = False  # the bot shut down while it was written
    cut: bool = False  # the remote engine's server failed while it was written
    failed: bool = False
    truncated: bool = False  # the user's message did not fit; the model saw its end
    start_forgotten: bool = False  # the conversation's start dropped out of the window
    forgotten: bool = False  # /forget came first: nothing may be shown or stored
    waiting: bool = False  # accepted during shutdown: answered after the restart
    n_tokens: int = 0
    telegram_message_ids: list[int] = field(default_factory=list)

    @property
    def shows_nothing(self) -> bool:
        """No reply was started (stopped while queued, /forget, or left for the restart)."""
        return self.bot_message_id is None

    @property
    def empty(self) -> bool:
        return not self.text.strip() and not (self.forgotten or self.waiting)


def to_turns(history: Sequence[MessageRecord], upto: int) -> list[ChatMessage]:
    """What the model sees when it answers message `upto`: user messages, and bot replies the
    user saw (failed ones are not, nor replies the user replaced with a regenerated one), in
    the order of the conversation (see `in_conversation_order`)."""
    return [
        ChatMessage(record.role, record.text)
        for record in in_conversation_order(history, upto)
        if record.role == "user"
        or (record.status not in ("failed", "replaced") and record.text.strip())
    ]


def in_conversation_order(history: Sequence[MessageRecord], upto: int) -> list[MessageRecord]:
    """The rows of `history` (in id order, as stored) up to message `upto`, each user message
    followed by the replies that answer it.

    Storage order is not conversation order: a user who sends two messages quickly has both
    stored before the first reply's row is opened (m1, m2, r1, r2), and the model must see
    m1, r1, m2, r2. A reply sits right after its question (`reply_to`); replies to `upto`
    itself and to later messages are left out (the reply to `upto` is the one being
    written). A reply with no recorded question (stored before migration 0005) keeps its
    place by id, as before."""
    questions = {r.id for r in history if r.role == "user" and r.id < upto}
    answers: dict[int, list[MessageRecord]] = {}
    for record in history:
        if record.role == "bot" and record.reply_to in questions:
            answers.setdefault(record.reply_to, []).append(record)
    ordered: list[MessageRecord] = []
    for record in history:
        if record.id > upto:
            break
        if record.role == "user":
            ordered.append(record)
            ordered.extend(answers.get(record.id, ()))
        elif record.reply_to is None:
            ordered.append(record)
        # Otherwise a reply placed after its question above, or one to `upto`: left out.
    return ordered
