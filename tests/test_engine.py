from __future__ import annotations

import asyncio
from pathlib import Path

import llama_cpp
import numpy as np
import numpy.typing as npt
import pytest
from llama_cpp import Llama
from sampling import GREEDY

from models.prompt.templates import ChatMessage
from models.runtime.chat_model import ChatModel, load_chat_model
from models.runtime.engine import ChatEngine, LogitsProcessor
from models.runtime.loader import ModelConfig, load_llama

HISTORY = [ChatMessage("user", "Привет! Расскажи сказку про кота.")]


def prompt_for(model: ChatModel, text: str = "Привет! Расскажи сказку про кота.") -> list[int]:
    return model.build_prompt("Ты помощник.", [ChatMessage("user", text)]).tokens


def forcing(sequence: list[int]) -> LogitsProcessor:
    """Make the model emit exactly `sequence`, one token per step."""
    step = {"i": 0}

    def processor(
        input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        forced = np.full_like(scores, -np.inf)
        forced[sequence[min(step["i"], len(sequence) - 1)]] = 0.0
        step["i"] += 1
        return forced

    return processor


async def collect(generation_stream: object) -> list[str]:
    return [delta async for delta in generation_stream]  # type: ignore[attr-defined]


async def test_stream_equals_result_and_llama_cpp(chat_model: ChatModel, tiny_gguf: Path) -> None:
    prompt = prompt_for(chat_model)
    generation = chat_model.engine.submit(prompt, max_new_tokens=40)
    deltas = await collect(generation.stream())
    result = await generation.result()
    assert "".join(deltas) == result.text
    assert result.n_tokens == 40
    assert result.finish_reason == "length"
    assert result.text.strip()

    # llama-cpp-python's own completion API, on a fresh context, is the independent reference.
    reference = Llama(str(tiny_gguf), n_ctx=2048, verbose=False)
    completion = reference.create_completion(
        prompt, max_tokens=40, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0
    )
    reference.close()
    assert result.text == completion["choices"][0]["text"]  # type: ignore[index]


async def test_utf8_is_never_split(chat_model: ChatModel, tiny_gguf: Path) -> None:
    text = "Кот 😀 ёж"
    tokenizer = chat_model.tokenizer
    vocab = Llama(str(tiny_gguf), vocab_only=True, verbose=False)
    single_byte = {}
    for token in range(vocab.n_vocab()):
        piece = vocab.detokenize([token])
        if len(piece) == 1:
            single_byte[piece[0]] = token
    # One token per byte: every Cyrillic letter and the emoji arrive in pieces.
    byte_tokens = [single_byte[b] for b in text.encode()]
    eos = tokenizer.token_id("</s>")
    generation = chat_model.engine.submit(
        prompt_for(chat_model), max_new_tokens=100, logits_processor=forcing([*byte_tokens, eos])
    )
    deltas = await collect(generation.stream())
    result = await generation.result()
    assert result.finish_reason == "stop"
    assert result.n_tokens == len(byte_tokens)
    assert "".join(deltas) == text
    assert all("\ufffd" not in delta for delta in deltas)
    # Each delta is whole characters; the emoji came as one delta though it was four tokens.
    assert "😀" in deltas


async def test_stops_at_template_end_token(chat_model: ChatModel) -> None:
    words = chat_model.tokenizer.encode("Жили-были")
    eos = chat_model.tokenizer.token_id("</s>")
    generation = chat_model.engine.submit(
        prompt_for(chat_model), max_new_tokens=50, logits_processor=forcing([*words, eos, *words])
    )
    result = await generation.result()
    assert result.finish_reason == "stop"
    assert result.text == "Жили-были"


async def test_cancel_stops_within_one_token(chat_model: ChatModel) -> None:
    generation = chat_model.engine.submit(prompt_for(chat_model), max_new_tokens=400)
    seen: list[str] = []
    async for delta in generation.stream():
        seen.append(delta)
        if len(seen) == 5:
            generation.cancel()
    result = await generation.result()
    assert result.finish_reason == "cancelled"
    assert result.text.startswith("".join(seen[:5]))
    # The worker may have produced one more token before it saw the flag, never many.
    assert result.n_tokens <= 7


async def test_cancel_stops_a_long_prompt_evaluation_midway(
    chat_model: ChatModel, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = chat_model.engine
    llama = engine._llama
    prompt = chat_model.tokenizer.encode("борщ и щи " * 1000)[:1900]
    generation = engine.submit(prompt, max_new_tokens=8)
    context, decode = llama._ctx, llama._ctx.decode
    batches = []

    def decode_then_cancel(batch: llama_cpp.llama_batch) -> None:
        batches.append(batch)
        if len(batches) == 2:
            generation.cancel()  # /stop while llama.cpp is inside the second batch
        decode(batch)

    monkeypatch.setattr(context, "decode", decode_then_cancel)
    result = await generation.result()
    monkeypatch.undo()
    assert result.finish_reason == "cancelled"
    assert result.n_prompt_evaluated == 0
    # Stopped inside the second batch of 512, not after all four.
    assert len(batches) == 2
    assert llama.n_tokens == 512

    # What was evaluated before the cancel is reused, and the context gives the right answer.
    again = await engine.submit(prompt, max_new_tokens=8).result()
    assert again.n_prompt_evaluated == len(prompt) - 512
    reference = Llama(str(tiny_gguf), n_ctx=2048, verbose=False)
    completion = reference.create_completion(
        prompt, max_tokens=8, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0
    )
    reference.close()
    assert again.text == completion["choices"][0]["text"]  # type: ignore[index]


async def test_queue_is_fifo_with_positions(chat_model: ChatModel) -> None:
    engine = chat_model.engine
    order: list[int] = []
    first = engine.submit(prompt_for(chat_model, "один"), max_new_tokens=60)
    second = engine.submit(prompt_for(chat_model, "два"), max_new_tokens=5)
    third = engine.submit(prompt_for(chat_model, "три"), max_new_tokens=5)
    assert [first.position, second.position, third.position] == [1, 2, 3]
    await first.started.wait()
    assert first.position == 0
    assert second.position == 2  # one running ahead plus itself
    assert engine.queue_length == 3

    async def watch(name: int, generation: object) -> None:
        await generation.started.wait()  # type: ignore[attr-defined]
        order.append(name)
        await generation.result()  # type: ignore[attr-defined]

    await asyncio.gather(watch(3, third), watch(2, second), watch(1, first))
    assert order == [1, 2, 3]
    assert engine.queue_length == 0


async def test_cancelled_requests_ahead_do_not_count(chat_model: ChatModel) -> None:
    engine = chat_model.engine
    running = engine.submit(prompt_for(chat_model, "один"), max_new_tokens=30)
    await running.started.wait()
    queued = [engine.submit(prompt_for(chat_model, "два"), max_new_tokens=5) for _ in range(3)]
    assert [q.position for q in queued] == [2, 3, 4]
    queued[0].cancel()  # /stop from the user ahead: the others move up at once
    assert [q.position for q in queued[1:]] == [2, 3]
    results = await asyncio.gather(*(q.result() for q in [running, *queued]))
    assert [r.finish_reason for r in results] == ["length", "cancelled", "length", "length"]


async def test_cancel_while_queued(chat_model: ChatModel) -> None:
    engine = chat_model.engine
    running = engine.submit(prompt_for(chat_model), max_new_tokens=100)
    queued = engine.submit(prompt_for(chat_model), max_new_tokens=100)
    queued.cancel()
    result = await queued.result()
    assert result.finish_reason == "cancelled"
    assert result.n_tokens == 0
    assert (await running.result()).n_tokens == 100


def byte_token(model_path: Path, byte: int) -> int:
    vocab = Llama(str(model_path), vocab_only=True, verbose=False)
    token = next(t for t in range(vocab.n_vocab()) if vocab.detokenize([t]) == bytes([byte]))
    vocab.close()
    return token


async def test_hard_cap_keeps_prompt_plus_reply_within_context(
    chat_model: ChatModel, tiny_gguf: Path
) -> None:
    engine = chat_model.engine
    filler = chat_model.tokenizer.encode("борщ " * 3000)
    prompt = filler[: engine.n_ctx - 5]
    # Only the first byte of a Cyrillic letter, again and again: the text never ends in whole
    # UTF-8, the state in which llama-cpp-python skips its own max_tokens check.
    lead_byte = byte_token(tiny_gguf, "ж".encode()[0])
    generation = engine.submit(prompt, max_new_tokens=512, logits_processor=forcing([lead_byte]))
    result = await generation.result()
    # A GPT-2 model asked past its context aborts the whole process; reaching here is the test.
    assert result.n_tokens == 5
    assert result.finish_reason == "length"
    assert engine._llama.n_tokens <= engine.n_ctx
    with pytest.raises(ValueError, match="does not fit"):
        engine.submit(filler[: engine.n_ctx], max_new_tokens=1)


async def test_reuses_prefix_of_the_previous_prompt(chat_model: ChatModel) -> None:
    engine = chat_model.engine
    first = prompt_for(chat_model)
    r1 = await engine.submit(first, max_new_tokens=8).result()
    assert r1.n_prompt_evaluated == len(first)
    follow_up = [*first, *chat_model.tokenizer.encode(" и ещё немного")]
    r2 = await engine.submit(follow_up, max_new_tokens=8).result()
    assert r2.n_prompt_evaluated == len(follow_up) - len(first)


async def test_close_cancels_running_generation(tiny_gguf: Path) -> None:
    model = load_chat_model(
        ModelConfig(model_path=tiny_gguf, n_ctx=2048),
        template="gigasaiga",
        max_new_tokens=1500,
        sampling=GREEDY,
    )
    generation = model.engine.submit(prompt_for(model), max_new_tokens=1500)
    await generation.started.wait()
    await model.close()
    result = await generation.result()
    assert result.finish_reason == "cancelled"
    with pytest.raises(RuntimeError, match="closed"):
        model.engine.submit([1, 2, 3], max_new_tokens=1)


def test_lora_changes_output_and_scale_zero_is_base(tiny_gguf: Path, tiny_lora: Path) -> None:
    prompt = [2, 417, 210, 300, 301, 302]

    def greedy(lora: Path | None, scale: float) -> list[int]:
        llama = load_llama(
            ModelConfig(model_path=tiny_gguf, n_ctx=256, lora_path=lora, lora_scale=scale)
        )
        tokens = []
        for token in llama.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
            tokens.append(token)
            if len(tokens) == 20:
                break
        llama.close()
        return tokens

    base = greedy(None, 1.0)
    adapted = greedy(tiny_lora, 1.0)
    assert adapted != base
    assert greedy(tiny_lora, 1.0) == adapted  # deterministic
    assert greedy(tiny_lora, 0.0) == base


async def test_engine_rejects_empty_prompt(chat_model: ChatModel) -> None:
    engine: ChatEngine = chat_model.engine
    with pytest.raises(ValueError, match="empty"):
        engine.submit([], max_new_tokens=1)
