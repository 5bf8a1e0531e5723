"""Four people write at the same moment: through the fake Telegram server, every reply
streams from the start and all four are decoded together."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from bot_e2e import load_model, running_bot

from models.runtime.chat_model import ChatModel
from models.runtime.engine import Generation

USERS = [3001, 3002, 3003, 3004]
REPLY_TOKENS = 48


def record(model: ChatModel, seconds_per_token: float) -> list[Generation]:
    """Every reply runs to its cap (no stop token), each token a little slower than the tiny
    model writes, so that drafts can be seen before a reply ends."""
    engine = model.engine
    original = engine.submit
    banned = np.asarray(sorted(engine.stop_ids), dtype=np.intp)
    submitted: list[Generation] = []

    def slow(ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        time.sleep(seconds_per_token)
        logits[banned] = -np.inf
        return logits

    def submit(prompt: list[int], **kwargs: Any) -> Generation:
        generation = original(prompt, logits_processor=slow, **kwargs)
        submitted.append(generation)
        return generation

    engine.submit = submit  # type: ignore[method-assign]
    return submitted


def span(generation: Generation) -> int:
    """Decode steps from the first to the last token."""
    return generation.token_steps[-1] - generation.token_steps[0] + 1


async def test_four_users_at_once_stream_together(tiny_gguf: Path, tmp_path: Path) -> None:
    model = load_model(tiny_gguf, max_new_tokens=REPLY_TOKENS, parallel=4)
    generations = record(model, seconds_per_token=0.004)
    try:
        async with running_bot(
            model, tmp_path, allowed_users=[str(u) for u in USERS], stream_edit_interval=0.2
        ) as bot:
            # One reply alone first: the yardstick.
            started = time.perf_counter()
            bot.tg.push_message(USERS[0], "Привет! Расскажи сказку.")
            await bot.wait_reply(USERS[0])
            alone_s = time.perf_counter() - started
            solo = generations[0]

            started = time.perf_counter()
            for n, user in enumerate(USERS):
                bot.tg.push_message(user, f"Как приготовить борщ? Вопрос номер {n}.")
            for user in USERS:
                count = 2 if user == USERS[0] else 1
                await bot.wait_reply(user, count, within=120)
            together_s = time.perf_counter() - started

            together = generations[1:]
            assert len(together) == 4
            results = [await g.result() for g in together]
            assert all(r.n_tokens == REPLY_TOKENS for r in results)
            # All stored, complete, in each user's own conversation.
            for user in USERS:
                history = await bot.history(user)
                assert history[-1].role == "bot" and history[-1].status == "complete"
                assert history[-1].text.strip()
            # Every reply streamed from the start: each showed a draft before any finished.
            final_sends = []
            first_drafts = []
            for user in USERS:
                events = bot.tg.transcript(user)
                sends = [e.at for e in events if e.kind == "send"]
                drafts = [e.at for e in events if e.kind == "draft" and e.at >= started]
                assert drafts, f"user {user} saw no draft"
                first_drafts.append(min(drafts))
                final_sends.append(max(sends))
            assert max(first_drafts) < min(final_sends)
            # Decoded together: each step gave every reply its next token, so the last one
            # finished within a few steps of one reply's length, not four lengths.
            steps = max(g.token_steps[-1] for g in together) - min(
                g.token_steps[0] for g in together
            )
            assert steps < 1.5 * span(solo)
            shared = set.intersection(*(set(g.token_steps) for g in together))
            assert len(shared) >= REPLY_TOKENS // 2  # (updates arrive a few steps apart)
            print(
                f"\none reply alone: {alone_s:.2f} s, {span(solo)} steps; "
                f"four at once: {together_s:.2f} s ({together_s / alone_s:.2f}x), {steps} steps"
            )
    finally:
        await model.close()
