"""Fit a conversation into the model's context window.

The prompt plus the reply reserve must fit `n_ctx`. The system prompt and the newest user
message always stay; the oldest whole turns (a user message with the bot's answers to it) go
first. Token counts come from encoding the candidate prompt exactly as it will be fed.

Sliding with a low watermark: once the conversation overflows the budget, the window drops
old turns until the prompt fits `low_watermark` x budget rather than the budget itself, and
keeps that beginning while the conversation grows back up to the budget. Consecutive prompts
then start with the same tokens, so the engine reuses the conversation's kept model state and
evaluates only the new turn; each slide costs one re-evaluation of the (shorter) prompt. The
price is memory: right after a slide the model sees only `low_watermark` of the budget.
`low_watermark=1` is the plain window that drops as few turns as possible every time.

The window keeps no state between calls: where the beginning sits is worked out by replaying
the conversation's own history turn by turn, so the same history always gives the same prompt,
also after a restart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from models.errors import TemplateError, WindowError
from models.prompt.templates import ChatMessage, ChatTemplate
from models.prompt.tokenizer import Tokenizer

Turn = list[ChatMessage]

# Fraction of the prompt budget (N_CTX - MAX_NEW_TOKENS) the window slides down to.
DEFAULT_LOW_WATERMARK = 0.5
MAX_REMEMBERED = 100_000  # turn lengths the window remembers


@dataclass(frozen=True)
class WindowResult:
    tokens: list[int]
    messages: list[ChatMessage]
    n_ctx: int
    reserve: int
    dropped_turns: int = 0
    dropped_messages: int = 0
    truncated_last: bool = False

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
    def __init__(
        self,
        template: ChatTemplate,
        tokenizer: Tokenizer,
        *,
        n_ctx: int,
        reserve: int,
        low_watermark: float = 1.0,
    ):
        if reserve >= n_ctx:
            raise WindowError(f"MAX_NEW_TOKENS ({reserve}) must be smaller than N_CTX ({n_ctx}).")
        if not 0.0 < low_watermark <= 1.0:
            raise WindowError(
                f"WINDOW_LOW_WATERMARK must be above 0 and at most 1, not {low_watermark}."
            )
        self.template = template
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.reserve = reserve
        self.low_watermark = low_watermark
        self._costs: dict[bytes, int] = {}

    @property
    def budget(self) -> int:
        return self.n_ctx - self.reserve

    @property
    def low_budget(self) -> int:
        """What the prompt is cut down to when the conversation overflows."""
        return max(1, int(self.budget * self.low_watermark))

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

        start = self._slide_start(system, turns) if self.low_watermark < 1.0 else 0
        fitting: dict[int, list[int]] = {}  # turns dropped -> the prompt, when it fits

        def fits(dropped: int) -> bool:
            tokens = self._encode(system, candidate(dropped))
            if len(tokens) <= self.budget:
                fitting[dropped] = tokens
            return dropped in fitting

        # The fewest turns to drop, as fewer turns never need more tokens. Searched from the
        # newest end, doubling, then halving: the text encoded stays in proportion to what is
        # kept, not to a history of months. With a watermark the replayed start already fits.
        low, high, step = start, len(older), 1
        while high - step >= low:
            if not fits(high - step):
                low = high - step + 1
                break
            high -= step
            step *= 2
        while low < high:  # every count below `low` is too long; `high` fits if it was tried
            middle = (low + high) // 2
            if fits(middle):
                high = middle
            else:
                low = middle + 1
        if high in fitting or fits(high):
            return WindowResult(
                tokens=fitting[high],
                messages=candidate(high),
                n_ctx=self.n_ctx,
                reserve=self.reserve,
                dropped_turns=high,
                dropped_messages=orphans + sum(len(turn) for turn in older[:high]),
            )
        return self._truncate_newest(
            system, newest[0], dropped_turns=len(older), dropped_messages=len(history) - 1
        )

    def _slide_start(self, system: str | None, turns: Sequence[Turn]) -> int:
        """Replay the conversation turn by turn; return how many old turns it has slid past.

        Each turn is measured on its own (templates put a special token between messages, so
        lengths add up); the caller checks the final prompt exactly. Whole turns, not single
        messages, because many GGUF templates refuse a conversation that starts with the bot.
        """
        try:
            head = self._cost([])
            base = len(self._encode(system, []))
        except Exception:  # a GGUF Jinja template may insist on messages; overcounting is safe
            head, base = 0, self.system_overhead(system)

        def cost(turn: Sequence[ChatMessage]) -> int:
            # Whole histories are replayed on every call: remember each turn's length.
            # Keyed by a digest so that the text itself is not kept around.
            digest = hashlib.blake2b(digest_size=16)
            for message in turn:
                # surrogatepass: a lone surrogate (storage keeps them) must hash, not raise.
                digest.update(
                    f"{message.role}\0{message.content}\0".encode("utf-8", "surrogatepass")
                )
            key = digest.digest()
            if key not in self._costs:
                if len(self._costs) >= MAX_REMEMBERED:
                    self._costs.clear()
                self._costs[key] = self._cost(turn) - head
            return self._costs[key]

        try:
            turn_costs = [cost(turn) for turn in turns]
            start, kept = 0, 0  # kept = tokens of turns[start:k]
            for k in range(1, len(turns)):
                kept += turn_costs[k - 1]
                if base + kept + turn_costs[k] <= self.budget:
                    continue  # the question fits, as its whole turn does
                asked = cost(turns[k][:1])  # the question as it was when it was the newest
                if base + kept + asked <= self.budget:
                    continue
                while start < k and base + kept + asked > self.low_budget:
                    kept -= turn_costs[start]
                    start += 1
        except TemplateError:
            return 0  # a template that cannot format a turn alone: slide like the plain window
        return start

    def _cost(self, messages: Sequence[ChatMessage]) -> int:
        return len(self.template.encode(messages, self.tokenizer, add_generation_prompt=False))

    def _truncate_newest(
        self, system: str | None, message: ChatMessage, *, dropped_turns: int, dropped_messages: int
    ) -> WindowResult:
        """The newest message alone is too long: keep as much of its end as fits."""
        text = message.content
        best = self._encode(system, [ChatMessage("user", "")])

        def fits(keep: int) -> bool:
            nonlocal best
            tokens = self._encode(system, [ChatMessage("user", text[len(text) - keep :])])
            if len(tokens) > self.budget:
                return False
            best = tokens
            return True

        # Doubling from the end, then halving: a pasted book costs what fits, not its length.
        low, high = 0, len(text)  # keeping `low` characters fits, more than `high` does not
        while low < high:
            probe = min(2 * low + 64, high)
            if not fits(probe):
                high = probe - 1
                break
            low = probe
        while low < high:
            middle = (low + high + 1) // 2
            if fits(middle):
                low = middle
            else:
                high = middle - 1
        kept_chars = low  # `best` is the prompt of the last probe that fitted: this one
        return WindowResult(
            tokens=best,
            messages=[ChatMessage("user", text[len(text) - kept_chars :])],
            n_ctx=self.n_ctx,
            reserve=self.reserve,
            dropped_turns=dropped_turns,
            dropped_messages=dropped_messages,
            truncated_last=True,
        )
