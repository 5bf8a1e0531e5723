"""Several conversations decoded together in one context: the same tokens as alone, cancels
that touch nobody else, prompts that never hold a stream for more than one chunk."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import numpy as np
import numpy.typing as npt
import pytest
from sampling import GREEDY
from tiny_model import TinyModelShape, build_tiny_gguf

from models.errors import ModelLoadError
from models.prompt.templates import ChatMessage
from models.runtime.chat_model import ChatModel, load_chat_model
from models.runtime.engine import Generation, LogitsProcessor
from models.runtime.loader import ModelConfig
from models.runtime.scheduler import BUSY_CHUNK
from models.runtime.state_cache import StateCacheConfig

SYSTEM = "Ты — Сайга, русскоязычный автоматический ассистент."
QUESTIONS = [
    "Привет! Расскажи сказку про кота и лису.",
    "Как приготовить борщ? Нужны свёкла, капуста и картофель, морковь и лук.",
    "Что такое нейронная сеть?",
    "Напиши стихотворение о зиме и морозе. Мороз и солнце; день чудесный!",
]
OFF = StateCacheConfig(enabled=False)


@pytest.fixture
def models(model_factory: Callable[..., ChatModel]) -> Callable[..., ChatModel]:
    def factory(parallel: int, cache: StateCacheConfig = OFF) -> ChatModel:
        return model_factory(parallel, cache, max_new_tokens=64)

    return factory


def no_stop(model: ChatModel) -> LogitsProcessor:
    """Every reply runs to its cap: the comparison covers all of its tokens."""
    banned = np.asarray(sorted(model.engine.stop_ids), dtype=np.intp)

    def processor(
        input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        scores[banned] = -np.inf
        return scores

    return processor


def prompt(model: ChatModel, question: str) -> list[int]:
    return model.build_prompt(SYSTEM, [ChatMessage("user", question)]).tokens


def generated(model: ChatModel, key: str) -> tuple[int, ...]:
    transcript = model.engine.transcript(key)
    assert transcript is not None
    return transcript.generated


async def alone(model: ChatModel, tokens: int = 40) -> list[tuple[int, ...]]:
    """Each question on its own, one after the other, in a one-sequence context."""
    out = []
    for i, question in enumerate(QUESTIONS):
        generation = model.engine.submit(
            prompt(model, question), max_new_tokens=tokens, key=f"r{i}",
            logits_processor=no_stop(model),
        )  # fmt: skip
        await generation.result()
        out.append(generated(model, f"r{i}"))
    return out


async def test_four_conversations_decoded_together_equal_each_alone(
    models: Callable[..., ChatModel],
) -> None:
    reference = await alone(models(1))
    model = models(4)
    generations = [
        model.engine.submit(
            prompt(model, q), max_new_tokens=40, key=f"k{i}", logits_processor=no_stop(model)
        )
        for i, q in enumerate(QUESTIONS)
    ]
    results = await asyncio.gather(*(g.result() for g in generations))
    assert all(r.n_tokens == 40 for r in results)
    # They really were decoded together: every step of the first reply's tokens also
    # produced a token of each of the others.
    shared = set.intersection(*(set(g.token_steps) for g in generations))
    assert len(shared) >= 30
    assert [generated(model, f"k{i}") for i in range(4)] == reference
    assert all(len(set(r)) > 3 for r in reference)  # not one token repeated


async def test_cancelling_one_leaves_the_others_unchanged(
    models: Callable[..., ChatModel],
) -> None:
    reference = await alone(models(1))
    model = models(4)
    generations = [
        model.engine.submit(
            prompt(model, q), max_new_tokens=40, key=f"k{i}", logits_processor=no_stop(model)
        )
        for i, q in enumerate(QUESTIONS)
    ]
    seen = 0
    async for _ in generations[1].stream():
        seen += 1
        if seen == 5:
            generations[1].cancel()
    results = await asyncio.gather(*(g.result() for g in generations))
    assert results[1].finish_reason == "cancelled"
    assert results[1].n_tokens <= 7
    for i in (0, 2, 3):
        assert results[i].n_tokens == 40
        assert generated(model, f"k{i}") == reference[i]
    # The cancelled reply's tokens are a prefix of what it would have said.
    assert reference[1][: results[1].n_tokens] == generated(model, "k1")


async def test_a_long_prompt_never_holds_a_stream_for_more_than_one_chunk(
    models: Callable[..., ChatModel],
) -> None:
    model = models(2)
    engine = model.engine
    streaming = engine.submit(
        prompt(model, QUESTIONS[0]), max_new_tokens=400, key="a", logits_processor=no_stop(model)
    )
    long_prompt = model.tokenizer.encode("борщ и щи " * 1000)[:1500]
    newcomer: Generation | None = None
    steps_at_submit = 0
    async for _ in streaming.stream():
        if newcomer is None and len(streaming.token_steps) >= 5:
            steps_at_submit = engine.steps
            newcomer = engine.submit(long_prompt, max_new_tokens=4, key="b")
    assert newcomer is not None
    result = await newcomer.result()
    assert result.n_prompt_evaluated == 1500
    first_token = newcomer.token_steps[0]
    # The prompt went in over many steps, a chunk at a time...
    assert first_token - steps_at_submit >= 1500 // BUSY_CHUNK
    # ...and each of those steps also gave the streaming reply its next token.
    during = [s for s in streaming.token_steps if steps_at_submit < s <= first_token]
    assert during == list(range(during[0], first_token + 1))
    assert len(during) >= 1500 // BUSY_CHUNK
    gaps = np.diff(streaming.token_steps)
    assert gaps.max() == 1


async def test_cancel_in_the_middle_of_a_prompt_frees_the_sequence_for_the_next(
    models: Callable[..., ChatModel],
) -> None:
    model = models(2)
    engine = model.engine
    long_prompt = model.tokenizer.encode("борщ и щи " * 1000)[:1800]
    stopped: list[Generation] = []
    banned = no_stop(model)
    prefill_steps: list[int] = []

    def stop_mid_prompt(
        ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        # Runs on the worker thread once per step of the streaming reply.
        if stopped and stopped[0].started.is_set():
            prefill_steps.append(engine.steps)
            if len(prefill_steps) == 3:
                stopped[0].cancel()  # /stop after three chunks of the long prompt
        return banned(ids, scores)

    streaming = engine.submit(
        prompt(model, QUESTIONS[0]), max_new_tokens=200, key="a", logits_processor=stop_mid_prompt
    )
    await streaming.started.wait()
    stopped.append(engine.submit(long_prompt, max_new_tokens=4, key="b"))
    waiting = engine.submit(prompt(model, QUESTIONS[2]), max_new_tokens=4, key="c")
    result = await stopped[0].result()
    assert result.finish_reason == "cancelled"
    assert result.n_tokens == 0
    assert result.n_prompt_evaluated == 0
    # The waiting conversation got the sequence while the stream went on.
    assert (await waiting.result()).n_tokens == 4
    assert not streaming.done
    assert (await streaming.result()).n_tokens == 200


async def test_a_parallel_that_does_not_fit_stops_the_start(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models.runtime.context as context

    # A machine with 400 MiB free: the tiny model and four of its 2048-token sequences fit
    # (1 MiB of KV each, plus a fixed allowance for buffers), two hundred do not.
    monkeypatch.setattr(context, "available_ram", lambda: 400 * 2**20)
    config = ModelConfig(model_path=tiny_gguf, n_ctx=2048, n_threads=2)
    with pytest.raises(
        ModelLoadError, match=r"PARALLEL=\d+ needs .* the largest PARALLEL that fits is \d+\."
    ):
        load_chat_model(config, template="gigasaiga", max_new_tokens=8, parallel=200)
    model = load_chat_model(config, template="gigasaiga", max_new_tokens=8)
    assert model.engine.parallel == 4  # the default where it fits
    await model.close()


async def test_q8_0_kv_cache_takes_less_ram_and_still_answers(
    models: Callable[..., ChatModel], tiny_gguf: Path, tmp_path: Path
) -> None:
    f16 = models(2)
    # q8_0 packs 32 values a block: the heads must be a multiple of 32 wide (real models are).
    wide_heads = build_tiny_gguf(tmp_path / "wide.gguf", shape=TinyModelShape(n_head=2))
    q8 = load_chat_model(
        ModelConfig(model_path=wide_heads, n_ctx=2048, n_threads=2, seed=7),
        template="gigasaiga",
        max_new_tokens=16,
        sampling=GREEDY,
        parallel=2,
        kv_type="q8_0",
    )
    try:
        assert q8.engine._llama.kv_bytes < 0.6 * f16.engine._llama.kv_bytes
        results = await asyncio.gather(
            *(
                q8.engine.submit(prompt(q8, q), max_new_tokens=16, key=f"q{i}").result()
                for i, q in enumerate(QUESTIONS[:2])
            )
        )
        assert all(r.n_prompt_evaluated == r.n_prompt and r.text for r in results)
    finally:
        await q8.close()
    with pytest.raises(ModelLoadError, match="KV_TYPE"):
        load_chat_model(
            ModelConfig(model_path=tiny_gguf, n_ctx=2048),
            template="gigasaiga",
            max_new_tokens=16,
            kv_type="q4",
        )


async def test_no_kv_slot_shrinks_the_batch_instead_of_failing(
    models: Callable[..., ChatModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.runtime.context import DecodeError

    reference = await alone(models(1))
    model = models(2)
    context = model.engine._llama._ctx
    decode = context.decode
    refused: list[int] = []

    def no_slot_for_big_batches(batch: llama_cpp.llama_batch) -> None:
        if batch.n_tokens > 16 and len(refused) < 3:
            refused.append(batch.n_tokens)
            raise DecodeError(1)  # what llama_decode says when no KV slot fits the batch
        decode(batch)

    monkeypatch.setattr(context, "decode", no_slot_for_big_batches)
    generations = [
        model.engine.submit(
            prompt(model, q), max_new_tokens=40, key=f"k{i}", logits_processor=no_stop(model)
        )
        for i, q in enumerate(QUESTIONS[:2])
    ]
    results = await asyncio.gather(*(g.result() for g in generations))
    assert len(refused) == 3 and refused == sorted(refused, reverse=True)
    assert all(r.n_tokens == 40 for r in results)
    assert [generated(model, f"k{i}") for i in range(2)] == reference[:2]


async def test_lora_and_its_scale_apply_to_the_batched_context(
    tiny_gguf: Path, tiny_lora: Path
) -> None:
    async def reply(lora: Path | None, scale: float) -> tuple[int, ...]:
        model = load_chat_model(
            ModelConfig(model_path=tiny_gguf, n_ctx=512, lora_path=lora, lora_scale=scale),
            template="gigasaiga",
            max_new_tokens=20,
            sampling=GREEDY,
            parallel=2,
        )
        try:
            await model.engine.submit(
                prompt(model, QUESTIONS[0]),
                max_new_tokens=20,
                key="a",
                logits_processor=no_stop(model),
            ).result()
            return generated(model, "a")
        finally:
            await model.close()

    base = await reply(None, 1.0)
    adapted = await reply(tiny_lora, 1.0)
    assert adapted != base
    assert await reply(tiny_lora, 0.0) == base
