"""The worker thread's loop: continuous batching of several conversations in one context.

Each step is one `llama_decode` of a batch holding the next token of every sequence that is
generating plus a chunk of prompt tokens of sequences still being evaluated, so a newcomer's
long prompt delays the others' next token by at most one chunk. Waiting requests are
admitted in FIFO order as soon as a sequence is free.

A sequence belongs to one conversation key at a time. A finished conversation stays in its
sequence until the sequence is needed; its next message then continues with no copy at all.
When the sequence is taken, the conversation's state goes into the `StateCache`, from where it
is restored into whichever sequence it gets next. Cells and kept states are only ever reused
by the conversation they belong to: a prompt that happens to share a prefix with another
conversation's is evaluated in full, so that timing reveals nothing about other people's text.
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from models.runtime.context import DecodeError, Entry, Runtime
from models.runtime.generation import FinishReason, Generation, GenerationResult
from models.runtime.kv_state import capture, common_prefix, restore
from models.runtime.sampler import SamplingParams, SequenceSampler
from models.runtime.state_cache import StateCache

logger = logging.getLogger(__name__)
V = TypeVar("V")

# Prompt tokens per step while other sequences are generating: their next token waits for
# this chunk, no longer. Alone, a prompt goes in batches of n_batch.
BUSY_CHUNK = 128


REMEMBERED = 4096  # conversations whose last reply's ids are kept for token-exact follow-ups


def remember(table: dict[str, V], key: str, value: V) -> None:
    table.pop(key, None)
    table[key] = value
    while len(table) > REMEMBERED:
        del table[next(iter(table))]


@dataclass(frozen=True)
class Transcript:
    """A finished reply: the prompt it answered and the exact ids the model generated."""

    prompt: tuple[int, ...]
    generated: tuple[int, ...]
    text: str


@dataclass
class Slot:
    seq: int
    key: str | None = None  # whose cells the sequence holds
    generation: Generation | None = None
    sampler: SequenceSampler | None = None
    pending: int | None = None  # sampled, not yet evaluated
    prompt_pos: int = 0  # next prompt index to evaluate
    generated: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    decoder: codecs.IncrementalDecoder | None = None
    evaluated: int = 0
    restored: int = 0
    admitted_at: float = 0.0
    first_token_at: float | None = None
    last_used: int = 0
    drop_on_finish: bool = False

    @property
    def prefilling(self) -> bool:
        return self.generation is not None and self.prompt_pos < len(self.generation.prompt)


class Scheduler:
    """Owned by the worker thread; `ChatEngine` hands it requests and commands."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        stop_ids: frozenset[int],
        sampling: SamplingParams,
        state_cache: StateCache | None,
        on_finish: Callable[[], None] = lambda: None,
    ) -> None:
        self.runtime = runtime
        self.on_finish = on_finish  # before the result is posted: counts stay exact
        self.stop_ids = stop_ids
        self.sampling = sampling
        self.state_cache = state_cache
        self.slots = [Slot(seq) for seq in range(runtime.parallel)]
        # Per conversation: its last reply's ids, and what its last prompt was made of.
        self.transcripts: dict[str, Transcript] = {}
        self.prompts: dict[str, tuple[bytes, tuple[int, ...]]] = {}
        self.tables = threading.Lock()  # the event loop's thread reads and notes prompts too
        self.steps = 0  # decode calls so far: tests measure latency in steps, not seconds
        self.max_chunk = runtime.n_batch
        self.busy_chunk = min(BUSY_CHUNK, runtime.n_batch)
        self._clock = itertools.count(1)

    # -- admission ----------------------------------------------------------------------------

    def busy(self, key: str | None) -> bool:
        return key is not None and any(
            s.generation is not None and s.generation.key == key for s in self.slots
        )

    def slot_for(self, key: str | None) -> Slot | None:
        """The conversation's own idle sequence, else an empty one, else the least recently
        used idle one; None when every sequence is generating."""
        idle = [s for s in self.slots if s.generation is None]
        own = [s for s in idle if s.key == key and self.runtime.tokens[s.seq]]
        if own:
            return own[0]
        empty = [s for s in idle if not self.runtime.tokens[s.seq] and s.pending is None]
        if empty:
            return empty[0]
        return min(idle, key=lambda s: s.last_used, default=None)

    def admit(self, slot: Slot, generation: Generation) -> None:
        runtime, cache, key = self.runtime, self.state_cache, generation.key
        prompt = np.asarray(generation.prompt, np.intc)
        restored = 0
        self.flush(slot)
        if slot.key != key or not runtime.tokens[slot.seq]:
            # Fetch this conversation's state before keeping the occupant's, whose arrival
            # could otherwise push it out of the budget.
            state = None
            if cache is not None and key is not None:
                kept = cache.tokens(key)
                if kept is not None and common_prefix(kept, prompt) > 0:
                    state = cache.load(key)
            self.evict(slot)
            slot.key = key
            if state is not None:
                if restore(runtime, slot.seq, state):
                    restored = 1
                else:
                    logger.warning("llama.cpp refused a kept state; evaluating the prompt in full")
                    assert cache is not None and key is not None
                    cache.drop(key)
        prefix = min(common_prefix(np.asarray(runtime.tokens[slot.seq], np.intc), prompt),
                     len(prompt) - 1)  # fmt: skip
        runtime.truncate(slot.seq, prefix)
        sampler = SequenceSampler(self.sampling, generation.prompt, runtime.n_vocab)
        slot.generation, slot.sampler = generation, sampler
        slot.prompt_pos = prefix
        slot.evaluated = len(prompt) - prefix
        slot.restored = prefix if restored else 0
        slot.generated, slot.pieces = [], []
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.admitted_at, slot.first_token_at = time.perf_counter(), None
        slot.drop_on_finish = False
        logger.debug("sequence %d: %d of %d prompt tokens kept", slot.seq, prefix, len(prompt))

    def evict(self, slot: Slot) -> None:
        """Empty the sequence; a conversation's cells go to the state cache first."""
        self.flush(slot)
        if self.state_cache is not None and slot.key is not None and self.runtime.tokens[slot.seq]:
            try:
                self.state_cache.put(slot.key, capture(self.runtime, slot.seq))
            except (RuntimeError, MemoryError) as exc:
                logger.warning("could not keep a conversation's state: %s", exc)
        self.runtime.truncate(slot.seq, 0)
        slot.key, slot.pending = None, None

    def flush(self, slot: Slot) -> None:
        """Evaluate a finished reply's last token now: the kept state then holds all of it."""
        if slot.generation is None and slot.pending is not None:
            entry = Entry(slot.seq, slot.pending, len(self.runtime.tokens[slot.seq]), False)
            slot.pending = None
            # On failure the token is simply evaluated with the conversation's next prompt.
            with contextlib.suppress(DecodeError):
                self._decode([entry], None)

    def drop(self, key: str) -> None:
        """/reset, /system, /forget: no cell, kept state or transcript of `key` stays."""
        if self.state_cache is not None:
            self.state_cache.drop(key)
        with self.tables:
            self.transcripts.pop(key, None)
            self.prompts.pop(key, None)
        for slot in self.slots:
            if slot.key != key:
                continue
            if slot.generation is not None:
                slot.drop_on_finish = True
            else:
                self.runtime.truncate(slot.seq, 0)
                slot.key, slot.pending = None, None

    # -- one step -----------------------------------------------------------------------------

    def active(self) -> list[Slot]:
        return [s for s in self.slots if s.generation is not None]

    def reap_cancelled(self) -> None:
        for slot in self.active():
            assert slot.generation is not None
            if slot.generation.cancelled:
                self.finish(slot, "cancelled")

    def step(self) -> bool:
        """Decode one batch and sample from it; False when there was nothing to decode."""
        self.reap_cancelled()
        entries: list[Entry] = []
        sampled: list[tuple[int, Slot]] = []  # batch index -> the slot that samples from it
        for slot in self.slots:
            if slot.pending is not None:
                pos = len(self.runtime.tokens[slot.seq])
                wants = slot.generation is not None
                if wants:
                    sampled.append((len(entries), slot))
                entries.append(Entry(slot.seq, slot.pending, pos, wants))
        generating = bool(sampled)
        room = self.runtime.n_batch - len(entries)
        chunk = min(room, self.busy_chunk if generating else self.max_chunk)
        prefilling: list[tuple[Slot, int]] = []
        for slot in sorted(self.active(), key=lambda s: s.admitted_at):
            if not slot.prefilling or chunk <= 0:
                continue
            assert slot.generation is not None
            prompt = slot.generation.prompt
            n = min(len(prompt) - slot.prompt_pos, chunk)
            chunk -= n
            start = len(self.runtime.tokens[slot.seq])
            for i in range(n):
                last = slot.prompt_pos + i == len(prompt) - 1
                if last:
                    sampled.append((len(entries), slot))
                entries.append(Entry(slot.seq, prompt[slot.prompt_pos + i], start + i, last))
            prefilling.append((slot, n))
        if not entries:
            return False
        abort = self._abort_check(prefilling) if prefilling else None
        try:
            self._decode(entries, abort)
        except DecodeError as exc:
            self._recover(exc, prefilling)
            return True
        for slot, n in prefilling:
            slot.prompt_pos += n
        for slot in self.slots:
            if slot.generation is None or not slot.prefilling:
                slot.pending = None
        for index, slot in sampled:
            self._sample(slot, index)
        return True

    def _decode(self, entries: list[Entry], abort: Callable[[], bool] | None) -> None:
        self.steps += 1
        self.runtime.decode(entries, abort)

    def _abort_check(self, prefilling: list[tuple[Slot, int]]) -> Callable[[], bool]:
        # llama.cpp asks between the graph's steps: a /stop must not wait for a whole chunk
        # of a 13B model's prompt. Aborting undoes the batch for everybody; the others simply
        # redo it in the next step.
        generations = [slot.generation for slot, _ in prefilling]
        return lambda: any(g is not None and g.cancelled for g in generations)

    def _recover(self, exc: DecodeError, prefilling: list[tuple[Slot, int]]) -> None:
        if exc.code == 2:
            self.reap_cancelled()  # the aborted batch left no cells; the rest is redone
            return
        if exc.code == 1 and any(n > 1 for _, n in prefilling):
            # No KV slot for this batch: try again with smaller prompt chunks.
            logger.warning("llama.cpp found no KV slot for a batch; shrinking it")
            self.max_chunk = max(1, self.max_chunk // 2)
            self.busy_chunk = max(1, min(self.busy_chunk, self.max_chunk) // 2)
            return
        # Nothing left to shrink: fail the requests in this batch rather than the engine.
        logger.error("llama_decode failed (%d); ending the replies in this batch", exc.code)
        for slot in self.active():
            generation = slot.generation
            assert generation is not None
            if slot.sampler is not None:
                slot.sampler.close()
            slot.generation, slot.sampler, slot.pending = None, None, None
            self.runtime.truncate(slot.seq, 0)
            slot.key = None
            self.on_finish()
            generation.fail(exc)

    def _sample(self, slot: Slot, index: int) -> None:
        generation = slot.generation
        assert generation is not None and slot.sampler is not None and slot.decoder is not None
        # The sequence's ids so far, only built for a logits processor that looks at them.
        ids = [*generation.prompt, *slot.generated] if generation.logits_processor else []
        token = slot.sampler.sample(self.runtime, index, ids, generation.logits_processor)
        generation.token_steps.append(self.steps)
        if slot.first_token_at is None:
            slot.first_token_at = time.perf_counter()
        if generation.cancelled:
            self.finish(slot, "cancelled")
            return
        if token in self.stop_ids:
            self.finish(slot, "stop")
            return
        slot.generated.append(token)
        delta = slot.decoder.decode(self.runtime.model.detokenize([token]))
        if delta:
            slot.pieces.append(delta)
            generation.emit(delta)
        slot.pending = token
        if len(slot.generated) >= generation.max_new_tokens:
            self.finish(slot, "length")

    def finish(self, slot: Slot, reason: FinishReason) -> None:
        generation = slot.generation
        assert generation is not None and slot.decoder is not None
        tail = slot.decoder.decode(b"", final=True)
        if tail:
            slot.pieces.append(tail)
            generation.emit(tail)
        now = time.perf_counter()
        first = slot.first_token_at or now
        started = reason != "cancelled" or not slot.prefilling
        text = "".join(slot.pieces)
        result = GenerationResult(
            text=text,
            n_tokens=len(slot.generated),
            n_prompt=len(generation.prompt),
            n_prompt_evaluated=slot.evaluated if started else 0,
            finish_reason=reason,
            prompt_seconds=first - slot.admitted_at,
            generation_seconds=now - first,
            n_prompt_restored=slot.restored,
        )
        if generation.key is not None and started and not slot.drop_on_finish:
            transcript = Transcript(tuple(generation.prompt), tuple(slot.generated), text)
            with self.tables:
                remember(self.transcripts, generation.key, transcript)
        if slot.sampler is not None:
            slot.sampler.close()
        slot.generation, slot.sampler = None, None
        slot.last_used = next(self._clock)
        if slot.drop_on_finish:
            self.runtime.truncate(slot.seq, 0)
            slot.key, slot.pending, slot.drop_on_finish = None, None, False
        self.on_finish()
        generation.complete(result)
