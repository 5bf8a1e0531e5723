"""Fit a conversation into the model's context window.

The prompt plus the reply reserve must fit `n_ctx`. The system prompt and the newest user
message always stay; the oldest whole turns (a user message with the bot's answers to it) go
first. Token counts come from encoding the candidate prompt exactly as it will be fed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from models.errors import WindowError
from models.templates import ChatMessage, ChatTemplate
from models.tokenizer import Tokenizer

Turn = list[ChatMessage]


@dataclass(frozen=True)
class WindowResult:
    tokens: list[int]
    messages: list[ChatMessage]
    n_ctx: int
    reserve: int
    dropped_turns: int = 0
    dropped_messages: int = 0
    truncated_last: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def n_prompt(self) -> int:
        return len(self.tokens)

    @property
    def budget(self) -> int:
        return self.n_ctx - self.reserve

    @property
    def max_new_tokens(self) -> int:
        """Room left for the reply: never lets prompt plus reply pass `n_ctx`."""
        return min(self.reserve, self.n_ctx - self.n_prompt)


def group_turns(history: Sequence[ChatMessage]) -> tuple[list[Turn], int]:
    """Split into turns that each start with a user message; returns (turns, orphans dropped)."""
    turns: list[Turn] = []
    orphans = 0
    for message in history:
        if message.role == "user":
            turns.append([message])
        elif message.role == "bot":
            if turns:
                turns[-1].append(message)
            else:
                orphans += 1  # a bot message with no user message before it
        else:
            raise ValueError(
                "history holds user and bot messages only; pass the system prompt apart"
            )
    return turns, orphans


class Window:
    def __init__(self, template: ChatTemplate, tokenizer: Tokenizer, *, n_ctx: int, reserve: int):
        if reserve >= n_ctx:
            raise WindowError(f"MAX_NEW_TOKENS ({reserve}) must be smaller than N_CTX ({n_ctx}).")
        self.template = template
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.reserve = reserve

    @property
    def budget(self) -> int:
        return self.n_ctx - self.reserve

    def _encode(self, system: str | None, messages: Sequence[ChatMessage]) -> list[int]:
        head = [ChatMessage("system", system)] if system else []
        return self.template.encode([*head, *messages], self.tokenizer)

    def system_overhead(self, system: str | None) -> int:
        """Tokens the system prompt and an empty user message take, reply prompt included."""
        return len(self._encode(system, [ChatMessage("user", "")]))

    def check_system(self, system: str | None) -> None:
        overhead = self.system_overhead(system)
        if overhead >= self.budget:
            raise WindowError(
                f"The system prompt takes {overhead} tokens, but only {self.budget} fit "
                f"(N_CTX {self.n_ctx} minus MAX_NEW_TOKENS {self.reserve}); "
                "shorten the system prompt or lower MAX_NEW_TOKENS."
            )

    def fit(self, system: str | None, history: Sequence[ChatMessage]) -> WindowResult:
        if not history or history[-1].role != "user":
            raise ValueError("the newest message of the history must be the user's")
        self.check_system(system)
        turns, orphans = group_turns(history)
        newest, older = turns[-1], turns[:-1]

        def candidate(dropped: int) -> list[ChatMessage]:
            return [m for turn in older[dropped:] for m in turn] + newest

        # Fewer turns never need more tokens, so the least number to drop is a binary search.
        low, high = 0, len(older)
        best: list[int] | None = None
        while low <= high:
            middle = (low + high) // 2
            tokens = self._encode(system, candidate(middle))
            if len(tokens) <= self.budget:
                best, high = tokens, middle - 1
            else:
                low = middle + 1
        if best is not None:
            dropped = low
            kept = candidate(dropped)
            return WindowResult(
                tokens=best,
                messages=kept,
                n_ctx=self.n_ctx,
                reserve=self.reserve,
                dropped_turns=dropped,
                dropped_messages=orphans + sum(len(turn) for turn in older[:dropped]),
            )
        return self._truncate_newest(
            system, newest[0], dropped_turns=len(older), dropped_messages=len(history) - 1
        )

    def _truncate_newest(
        self, system: str | None, message: ChatMessage, *, dropped_turns: int, dropped_messages: int
    ) -> WindowResult:
        """The newest message alone is too long: keep as much of its end as fits."""
        text = message.content
        low, high = 0, len(text)
        best = self._encode(system, [ChatMessage("user", "")])
        while low <= high:
            middle = (low + high) // 2
            tokens = self._encode(system, [ChatMessage("user", text[len(text) - middle :])])
            if len(tokens) <= self.budget:
                best, low = tokens, middle + 1
            else:
                high = middle - 1
        kept_chars = high
        return WindowResult(
            tokens=best,
            messages=[ChatMessage("user", text[len(text) - kept_chars :])],
            n_ctx=self.n_ctx,
            reserve=self.reserve,
            dropped_turns=dropped_turns,
            dropped_messages=dropped_messages,
            truncated_last=True,
            notes=[f"kept the last {kept_chars} of {len(text)} characters of the newest message"],
        )
