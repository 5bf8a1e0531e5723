"""Per-sequence states: restored anywhere equals cold, follow-ups evaluate only the new turn,
/forget leaves nothing, and no conversation ever reuses another's cells."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from models.prompt.templates import ChatMessage
from models.runtime.chat_model import ChatModel
from models.runtime.engine import GenerationResult, LogitsProcessor
from models.runtime.state_cache import StateCacheConfig
from models.runtime.state_file import SUFFIX, key_digest

SYSTEM = "Ты — Сайга, русскоязычный автоматический ассистент."
QUESTIONS = [
    "Привет! Расскажи сказку про кота и лису.",
    "Как приготовить борщ? Нужны свёкла, капуста и картофель.",
    "Что такое нейронная сеть? Объясни просто.",
    "Напиши стихотворение о зиме и морозе.",
]
RAM = StateCacheConfig(ram_bytes=64 * 2**20)
OFF = StateCacheConfig(enabled=False)


@pytest.fixture
def models(model_factory: Callable[..., ChatModel]) -> Callable[..., ChatModel]:
    def factory(parallel: int, cache: StateCacheConfig = RAM) -> ChatModel:
        return model_factory(parallel, cache, max_new_tokens=40)

    return factory


class Chats:
    """Plays the chat core: history per key, prompts built with the conversation's key."""

    def __init__(self, model: ChatModel, *, keyed_prompts: bool = True) -> None:
        self.model = model
        self.keyed = keyed_prompts
        self.histories: dict[str, list[ChatMessage]] = {}

    def prompt(self, key: str, text: str) -> list[int]:
        history = self.histories.setdefault(key, [])
        history.append(ChatMessage("user", text))
        return self.model.build_prompt(SYSTEM, history, key=key if self.keyed else None).tokens

    async def say(
        self, key: str, text: str, processor: LogitsProcessor | None = None
    ) -> GenerationResult:
        tokens = self.prompt(key, text)
        generation = self.model.engine.submit(
            tokens, max_new_tokens=40, key=key, logits_processor=processor
        )
        result = await generation.result()
        self.histories[key].append(ChatMessage("bot", result.text))
        return result


def forcing(sequence: list[int]) -> LogitsProcessor:
    step = {"i": 0}

    def processor(
        input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        forced = np.full_like(scores, -np.inf)
        forced[sequence[min(step["i"], len(sequence) - 1)]] = 0.0
        step["i"] += 1
        return forced

    return processor


def byte_tokens(model: ChatModel, text: str) -> list[int]:
    """The text as one token per byte: a re-tokenization of it never gives these ids."""
    llama = model.engine._llama.model
    single: dict[int, int] = {}
    for token in range(model.engine._llama.n_vocab):
        piece = llama.detokenize([token])
        if len(piece) == 1:
            single.setdefault(piece[0], token)
    return [single[b] for b in text.encode()]


def first_logits() -> tuple[LogitsProcessor, list[npt.NDArray[np.single]]]:
    seen: list[npt.NDArray[np.single]] = []

    def processor(
        input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        if not seen:
            seen.append(np.array(scores, copy=True))
        return scores

    return processor, seen


async def test_state_restored_into_another_sequence_gives_cold_logits(
    models: Callable[..., ChatModel],
) -> None:
    model, reference = models(2), models(2, OFF)
    chats = Chats(model)
    end = model.tokenizer.token_id("</s>")
    first = chats.prompt("a", QUESTIONS[0])
    # A reply that ends at once: the kept state is the prompt's cells, evaluated as one batch
    # as a cold evaluation does (cells of tokens decoded one by one round differently).
    await model.engine.submit(
        first, max_new_tokens=8, key="a", logits_processor=forcing([end])
    ).result()
    await chats.say("b", QUESTIONS[1])  # sequence 1
    await chats.say("c", QUESTIONS[2])  # takes sequence 0: "a" goes to the cache
    slot_of = {s.key: s.seq for s in model.engine._scheduler.slots}
    assert slot_of == {"c": 0, "b": 1}
    follow_up = [*first, *model.tokenizer.encode(" и ещё немного текста")]
    processor, seen = first_logits()
    result = await model.engine.submit(
        follow_up, max_new_tokens=1, key="a", logits_processor=processor
    ).result()
    assert {s.key: s.seq for s in model.engine._scheduler.slots}["a"] == 1  # not where it was
    assert result.n_prompt_restored == len(first)
    assert result.n_prompt_evaluated == len(follow_up) - result.n_prompt_restored
    cold_processor, cold = first_logits()
    cold_result = await reference.engine.submit(
        follow_up, max_new_tokens=1, logits_processor=cold_processor
    ).result()
    assert cold_result.n_prompt_evaluated == len(follow_up)
    np.testing.assert_array_equal(seen[0], cold[0])


@pytest.mark.parametrize("parallel", [1, 2])
async def test_a_follow_up_evaluates_only_the_new_turn(
    models: Callable[..., ChatModel], parallel: int
) -> None:
    model = models(parallel)
    tokenizer = model.tokenizer
    chats = Chats(model)
    reply = byte_tokens(model, "Жили-были кот и лиса")
    end = tokenizer.token_id("</s>")
    first_prompt = chats.prompt("a", QUESTIONS[0])
    first = await model.engine.submit(
        first_prompt, max_new_tokens=40, key="a", logits_processor=forcing([*reply, end])
    ).result()
    assert first.finish_reason == "stop"
    assert first.text == "Жили-были кот и лиса"
    chats.histories["a"].append(ChatMessage("bot", first.text))
    # With one sequence, someone else's turn pushes "a" out to the cache in between.
    await Chats(model).say("b", QUESTIONS[1])
    question = "А что было потом?"
    follow_up = chats.prompt("a", question)
    # The reply goes in as the ids the model generated, not as its text tokenized again.
    assert follow_up[: len(first_prompt) + len(reply)] == [*first_prompt, *reply]
    assert tokenizer.encode(first.text) != reply  # its text would tokenize otherwise
    result = await model.engine.submit(follow_up, max_new_tokens=4, key="a").result()
    # Evaluated: the end of the bot's message and the new turn, as the template lays them out.
    new_turn = [
        end,
        *tokenizer.encode("\n"),
        tokenizer.token_id("<s>"),
        *tokenizer.encode(f"user\n{question}"),
        end,
        *tokenizer.encode("\n"),
        tokenizer.token_id("<s>"),
        *tokenizer.encode("bot"),
    ]
    assert result.n_prompt_evaluated == len(new_turn)
    assert follow_up[-len(new_turn) :] == new_turn
    if parallel == 1:
        assert result.n_prompt_restored == len(first_prompt) + len(reply)

    # The same conversation with the reply tokenized again evaluates the reply once more.
    plain = Chats(models(parallel), keyed_prompts=False)
    plain_first = plain.prompt("a", QUESTIONS[0])
    await plain.model.engine.submit(
        plain_first, max_new_tokens=40, key="a", logits_processor=forcing([*reply, end])
    ).result()
    plain.histories["a"].append(ChatMessage("bot", first.text))
    again = await plain.model.engine.submit(
        plain.prompt("a", question), max_new_tokens=4, key="a"
    ).result()
    assert again.n_prompt_evaluated > len(new_turn)


async def test_an_edited_reply_is_tokenized_again(models: Callable[..., ChatModel]) -> None:
    model = models(2)
    chats = Chats(model)
    await chats.say("a", QUESTIONS[0])
    generated = model.engine.transcript("a")
    assert generated is not None
    chats.histories["a"][-1] = ChatMessage("bot", "Совсем другой ответ.")
    tokens = chats.prompt("a", "Дальше")
    assert tokens == model.window.fit(SYSTEM, chats.histories["a"]).tokens


async def test_forget_leaves_no_cell_and_no_file(
    models: Callable[..., ChatModel], tmp_path: Path
) -> None:
    model = models(2, StateCacheConfig(ram_bytes=0, disk_bytes=64 * 2**20, directory=tmp_path))
    engine = model.engine
    runtime = engine._llama
    chats = Chats(model)
    for key, question in zip("abc", QUESTIONS, strict=False):
        await chats.say(key, question)
    # "a" went to disk when "c" needed its sequence; "b" and "c" are in theirs.
    assert (tmp_path / f"{key_digest('a')}{SUFFIX}").exists()
    seq_of = {s.key: s.seq for s in engine._scheduler.slots}
    assert set(seq_of) == {"b", "c"}

    await engine.forget("a")
    await engine.forget("b")
    assert not (tmp_path / f"{key_digest('a')}{SUFFIX}").exists()
    assert runtime.cells(seq_of["b"]) == 0  # llama.cpp's own count, not the bookkeeping
    assert runtime.tokens[seq_of["b"]] == []
    assert runtime.cells(seq_of["c"]) > 0  # the others are untouched
    assert engine.transcript("a") is None and engine.transcript("b") is None
    assert engine.last_prompt("b") is None
    assert "a" not in engine.state_cache and "b" not in engine.state_cache  # type: ignore[operator]
    assert sorted(tmp_path.glob(f"*{SUFFIX}")) == []  # noqa: ASYNC240
    again = await chats.say("b", "Ты меня помнишь?")
    assert again.n_prompt_restored == 0
    assert again.n_prompt_evaluated == again.n_prompt


@pytest.mark.parametrize("parallel", [1, 2])
async def test_a_shared_prefix_of_another_conversation_is_evaluated_again(
    models: Callable[..., ChatModel], parallel: int
) -> None:
    """Defect 11 of issue 16: a newcomer whose prompt starts like someone else's must not get
    that someone's cells (how fast it answers would tell what the other person wrote)."""
    model = models(parallel)
    long_question = f"{QUESTIONS[1]} {QUESTIONS[2]} {QUESTIONS[3]}"
    first = model.build_prompt(SYSTEM, [ChatMessage("user", long_question)]).tokens
    await model.engine.submit(first, max_new_tokens=8, key="alice").result()
    shared = [ChatMessage("user", long_question + " И ещё вопрос.")]
    second = model.build_prompt(SYSTEM, shared).tokens
    assert second[: len(first) - 6] == first[: len(first) - 6]  # a long common beginning
    result = await model.engine.submit(second, max_new_tokens=8, key="bob").result()
    assert result.n_prompt_evaluated == len(second)
    assert result.n_prompt_restored == 0
    # Alice herself still continues from her own cells.
    own = await model.engine.submit(second, max_new_tokens=8, key="alice").result()
    assert own.n_prompt_evaluated < len(second) - len(first) + 8
