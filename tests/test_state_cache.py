"""Kept conversation states: same output as without them, restored equals cold, budgets,
invalidation, and files that must not be trusted."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from sampling import GREEDY

from models.prompt.templates import ChatMessage
from models.runtime.chat_model import ChatModel, load_chat_model
from models.runtime.engine import GenerationResult, LogitsProcessor
from models.runtime.loader import ModelConfig
from models.runtime.state_cache import StateCache, StateCacheConfig
from models.runtime.state_file import SUFFIX, FileStamp, KeptState, StateIdentity, key_digest

SYSTEM = "Ты — Сайга, русскоязычный автоматический ассистент."
QUESTIONS = [
    "Привет! Расскажи сказку про кота и лису.",
    "Как приготовить борщ? Нужны свёкла, капуста и картофель.",
    "Что такое нейронная сеть? Объясни просто.",
    "Напиши стихотворение о зиме и морозе.",
    "Где находится ближайшая библиотека?",
    "Сколько будет два плюс два?",
]
RAM_ONLY = StateCacheConfig(ram_bytes=64 * 2**20)
OFF = StateCacheConfig(enabled=False)


def disk_only(directory: Path) -> StateCacheConfig:
    # No RAM at all: every kept state goes through a file.
    return StateCacheConfig(ram_bytes=0, disk_bytes=64 * 2**20, directory=directory)


def load(
    model_path: Path,
    cache: StateCacheConfig,
    *,
    lora: Path | None = None,
    scale: float = 1.0,
    n_ctx: int = 2048,
    n_gpu_layers: int = 0,
) -> ChatModel:
    return load_chat_model(
        ModelConfig(
            model_path=model_path,
            n_ctx=n_ctx,
            n_threads=2,
            seed=7,
            lora_path=lora,
            lora_scale=scale,
            n_gpu_layers=n_gpu_layers,
        ),
        template="gigasaiga",
        max_new_tokens=40,
        sampling=GREEDY,
        state_cache=cache,
        parallel=1,  # one sequence: every other conversation's turn evicts the state
    )


@pytest.fixture
async def models() -> AsyncIterator[Callable[..., ChatModel]]:
    opened: list[ChatModel] = []

    def factory(*args: object, **kwargs: object) -> ChatModel:
        model = load(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(model)
        return model

    yield factory
    for model in opened:
        await model.close()


class Conversations:
    """Plays the bot: per-user history, prompt from the window, reply stored as the bot's."""

    def __init__(self, model: ChatModel) -> None:
        self.model = model
        self.histories: dict[str, list[ChatMessage]] = {}

    def prompt(self, key: str, text: str) -> list[int]:
        history = self.histories.setdefault(key, [])
        history.append(ChatMessage("user", text))
        return self.model.build_prompt(SYSTEM, history).tokens

    async def say(self, key: str, text: str) -> GenerationResult:
        prompt = self.prompt(key, text)
        generation = self.model.engine.submit(prompt, max_new_tokens=40, key=key)
        streamed = "".join([delta async for delta in generation.stream()])
        result = await generation.result()
        assert streamed == result.text
        self.histories[key].append(ChatMessage("bot", result.text))
        return result


async def interleave(model: ChatModel, users: int = 3, rounds: int = 3) -> list[GenerationResult]:
    chats = Conversations(model)
    results = []
    for round_ in range(rounds):
        for user in range(users):
            question = QUESTIONS[(user + round_) % len(QUESTIONS)]
            results.append(await chats.say(f"{user}:{user}", f"{question} ({user}, {round_})"))
    return results


def first_logits() -> tuple[LogitsProcessor, list[npt.NDArray[np.single]]]:
    """A processor that records the logits of the prompt's last token and changes nothing."""
    seen: list[npt.NDArray[np.single]] = []

    def processor(
        input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        if not seen:
            seen.append(np.array(scores, copy=True))
        return scores

    return processor, seen


async def logits_for(
    model: ChatModel, prompt: list[int], key: str | None
) -> tuple[npt.NDArray[np.single], GenerationResult]:
    processor, seen = first_logits()
    generation = model.engine.submit(prompt, max_new_tokens=1, logits_processor=processor, key=key)
    result = await generation.result()
    return seen[0], result


def state_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}"))


async def test_greedy_output_is_the_same_with_the_cache_on_or_off(
    tiny_gguf: Path, tmp_path: Path, models: Callable[..., ChatModel]
) -> None:
    cold = await interleave(models(tiny_gguf, OFF))
    in_ram = await interleave(models(tiny_gguf, RAM_ONLY))
    on_disk = await interleave(models(tiny_gguf, disk_only(tmp_path)))

    assert [r.text for r in in_ram] == [r.text for r in cold]
    assert [r.text for r in on_disk] == [r.text for r in cold]
    assert [r.n_tokens for r in on_disk] == [r.n_tokens for r in cold]
    assert all(r.text.strip() for r in cold)
    # From the second round on, another user always spoke in between. The kept state covers at
    # least the user's previous prompt (the reply's tokens match as far as the reply text
    # tokenizes the same way it was generated).
    for cached in (in_ram, on_disk):
        for i in range(3, len(cold)):
            previous, result = cached[i - 3], cached[i]
            assert result.n_prompt == cold[i].n_prompt
            assert result.n_prompt_restored >= previous.n_prompt
            assert result.n_prompt_evaluated == result.n_prompt - result.n_prompt_restored
            assert result.n_prompt_evaluated < cold[i].n_prompt_evaluated
    # Without the cache only the shared system prompt is reused between users.
    assert all(r.n_prompt_restored == 0 for r in cold)
    assert all(r.n_prompt_evaluated > r.n_prompt // 2 for r in cold[3:])


async def test_same_conversation_with_nobody_in_between_reuses_the_live_context(
    tiny_gguf: Path, models: Callable[..., ChatModel]
) -> None:
    model = models(tiny_gguf, RAM_ONLY)
    chats = Conversations(model)
    first = await chats.say("1:1", QUESTIONS[0])
    second = await chats.say("1:1", QUESTIONS[1])
    assert second.n_prompt_restored == 0  # nothing saved or restored
    assert second.n_prompt_evaluated <= second.n_prompt - first.n_prompt
    assert model.engine.state_cache is not None
    assert "1:1" not in model.engine.state_cache  # kept only when someone else needs the context


@pytest.mark.parametrize("where", ["ram", "disk"])
async def test_restored_state_gives_the_logits_of_a_cold_evaluation(
    tiny_gguf: Path, tmp_path: Path, models: Callable[..., ChatModel], where: str
) -> None:
    model = models(tiny_gguf, RAM_ONLY if where == "ram" else disk_only(tmp_path))
    reference = models(tiny_gguf, OFF)
    chats = Conversations(model)
    first = chats.prompt("a", QUESTIONS[0])
    await model.engine.submit(first, max_new_tokens=12, key="a").result()

    longer = [*first, *model.tokenizer.encode(" и ещё немного текста")]
    # Shares only part of the kept tokens: the rest of the restored cells must not count.
    branch = [*first[:-6], *model.tokenizer.encode(" совсем другой конец")]
    for prompt in (longer, branch):
        await chats.say("b", QUESTIONS[1])  # takes the context; "a" is kept
        warm, result = await logits_for(model, prompt, "a")
        assert result.n_prompt_restored >= len(first) - 6
        assert result.n_prompt_evaluated == len(prompt) - result.n_prompt_restored
        # Leave the reference a context that shares nothing, so it evaluates everything.
        await reference.engine.submit([5, 6, 7], max_new_tokens=1).result()
        cold, cold_result = await logits_for(reference, prompt, None)
        assert cold_result.n_prompt_evaluated == len(prompt)
        np.testing.assert_array_equal(warm, cold)


async def test_ram_budget_spills_least_recently_used_to_disk(
    tiny_gguf: Path, tmp_path: Path, models: Callable[..., ChatModel]
) -> None:
    # Everybody asks nearly the same thing, so every kept state has the same size.
    probe = models(tiny_gguf, RAM_ONLY)
    probing = Conversations(probe)
    await probing.say("p0", f"{QUESTIONS[0]} (9)")
    await probing.say("p1", f"{QUESTIONS[0]} (8)")
    assert probe.engine.state_cache is not None
    one_state = probe.engine.state_cache.stats.ram_bytes
    assert one_state > 0

    # Room for two states in RAM and two files on disk (a file adds a small header).
    config = StateCacheConfig(
        ram_bytes=int(one_state * 2.6), disk_bytes=int(one_state * 2.6), directory=tmp_path
    )
    model = models(tiny_gguf, config)
    cache = model.engine.state_cache
    assert cache is not None
    chats = Conversations(model)
    for user in range(5):
        result = await chats.say(f"u{user}", f"{QUESTIONS[0]} ({user})")
        assert result.finish_reason == "length"
        assert cache.stats.ram_bytes <= config.ram_bytes
        assert cache.stats.disk_bytes <= config.disk_bytes
        assert sum(p.stat().st_size for p in state_files(tmp_path)) <= config.disk_bytes
    # u4 is live; u2 and u3 in RAM, u0 and u1 spilled to disk, least recently used first.
    assert cache.ram_keys() == ["u2", "u3"]
    assert cache.disk_digests() == [key_digest("u0"), key_digest("u1")]
    assert len(state_files(tmp_path)) == 2

    # u0 comes back: read first, so the spill its turn causes (u2) pushes out u1, not u0.
    back = await chats.say("u0", "А теперь?")
    assert back.n_prompt_restored > 0
    assert cache.ram_keys() == ["u3", "u4"]
    assert cache.disk_digests() == [key_digest("u0"), key_digest("u2")]
    assert "u1" not in cache
    again = await chats.say("u1", "Я вернулся")
    assert again.n_prompt_restored == 0  # evicted: evaluated again, and still answered
    assert again.text


async def test_invalidate_and_forget(
    tiny_gguf: Path, tmp_path: Path, models: Callable[..., ChatModel]
) -> None:
    model = models(tiny_gguf, disk_only(tmp_path))
    engine = model.engine
    cache = engine.state_cache
    assert cache is not None
    chats = Conversations(model)
    await chats.say("a", QUESTIONS[0])
    await chats.say("b", QUESTIONS[1])
    await chats.say("c", QUESTIONS[2])
    assert len(state_files(tmp_path)) == 2  # a and b; c is live

    await engine.invalidate("a")  # /reset, /system
    assert "a" not in cache
    assert not (tmp_path / f"{key_digest('a')}{SUFFIX}").exists()
    follow_up = await chats.say("a", "Продолжим?")
    assert follow_up.n_prompt_restored == 0

    await engine.forget("b")  # kept on disk
    assert not (tmp_path / f"{key_digest('b')}{SUFFIX}").exists()
    await engine.forget("a")  # the live conversation: its context is wiped too
    assert engine._llama.n_tokens == 0
    assert not engine._llama.input_ids.any()
    assert [p.name for p in state_files(tmp_path)] == [f"{key_digest('c')}{SUFFIX}"]
    after = await chats.say("c", "Ты здесь?")
    assert after.n_prompt_restored > 0  # the others are untouched

    await model.close()  # /forget still works while the bot shuts down
    await engine.forget("c")
    assert state_files(tmp_path) == []


async def test_states_survive_a_restart(
    tiny_gguf: Path, tmp_path: Path, models: Callable[..., ChatModel]
) -> None:
    first = models(tiny_gguf, disk_only(tmp_path))
    chats = Conversations(first)
    await chats.say("a", QUESTIONS[0])
    await chats.say("b", QUESTIONS[1])
    await first.close()

    second = models(tiny_gguf, disk_only(tmp_path))
    chats.model = second
    resumed = await chats.say("a", "Что было дальше?")
    assert resumed.n_prompt_restored > 0

    reference = Conversations(models(tiny_gguf, OFF))
    reference.histories = {"a": chats.histories["a"][:-2]}
    cold = await reference.say("a", "Что было дальше?")
    assert resumed.text == cold.text


@pytest.mark.parametrize("change", ["lora", "lora_scale", "model_file", "n_ctx", "n_gpu_layers"])
async def test_states_of_another_model_or_adapter_are_deleted(
    tiny_gguf: Path,
    tiny_lora: Path,
    tmp_path: Path,
    models: Callable[..., ChatModel],
    change: str,
) -> None:
    model_path = tmp_path / "model.gguf"
    shutil.copy(tiny_gguf, model_path)
    states = tmp_path / "states"
    before: dict[str, object] = {"lora": None, "scale": 1.0, "n_ctx": 2048, "n_gpu_layers": 0}
    if change == "lora_scale":
        before["lora"] = tiny_lora
    first = models(model_path, disk_only(states), **before)
    chats = Conversations(first)
    await chats.say("a", QUESTIONS[0])
    await chats.say("b", QUESTIONS[1])
    await first.close()
    assert len(state_files(states)) == 1

    after = dict(before)
    if change == "lora":
        after["lora"] = tiny_lora
    elif change == "lora_scale":
        after["scale"] = 0.5
    elif change == "n_ctx":
        after["n_ctx"] = 1024
    elif change == "n_gpu_layers":
        after["n_gpu_layers"] = 99  # a GPU build would now compute the layers there
    else:
        os.utime(model_path, ns=(1, 1))  # the model file was replaced
    second = models(model_path, disk_only(states), **after)
    cache = second.engine.state_cache
    assert cache is not None
    assert state_files(states) == []
    assert cache.stats.dropped_stale == 1
    chats.model = second
    assert (await chats.say("a", "Дальше")).n_prompt_restored == 0


async def test_damaged_files_are_ignored_and_deleted(
    tiny_gguf: Path, tmp_path: Path, models: Callable[..., ChatModel]
) -> None:
    model = models(tiny_gguf, disk_only(tmp_path))
    chats = Conversations(model)
    for user in "abcd":
        await chats.say(user, QUESTIONS["abcd".index(user)])
    files = {user: tmp_path / f"{key_digest(user)}{SUFFIX}" for user in "abc"}
    assert all(path.exists() for path in files.values())

    # One flipped bit deep in the KV data: llama.cpp would accept it, the checksum does not.
    data = bytearray(files["a"].read_bytes())
    data[-100] ^= 0x01
    files["a"].write_bytes(bytes(data))
    resumed = await chats.say("a", "Продолжай")
    assert resumed.n_prompt_restored == 0
    assert not files["a"].exists()
    reference = Conversations(models(tiny_gguf, OFF))
    reference.histories = {"a": chats.histories["a"][:-2]}
    assert (await reference.say("a", "Продолжай")).text == resumed.text

    # Found at start-up: a truncated file, a file of garbage, a write that never finished.
    files["b"].write_bytes(files["b"].read_bytes()[:-10])
    (tmp_path / f"{'0' * 40}{SUFFIX}").write_bytes(b"not a state at all")
    (tmp_path / ".interrupted.tmp").write_bytes(b"half")
    await model.close()
    restarted = models(tiny_gguf, disk_only(tmp_path))
    cache = restarted.engine.state_cache
    assert cache is not None
    assert cache.stats.dropped_damaged == 2
    assert not files["b"].exists()
    # "a" is live when the engine closes: only c and d (saved when "a" took over) remain.
    assert sorted(os.listdir(tmp_path)) == sorted(f"{key_digest(user)}{SUFFIX}" for user in "cd")
    chats.model = restarted
    assert (await chats.say("c", "А ты?")).n_prompt_restored > 0


def identity(tiny_gguf: Path) -> StateIdentity:
    return StateIdentity(
        model=FileStamp.of(tiny_gguf),
        lora=None,
        lora_scale=1.0,
        n_ctx=2048,
        n_batch=512,
        n_ubatch=512,
        type_k=1,
        type_v=1,
        flash_attn=-1,
        n_gpu_layers=0,
        llama_cpp="test",
    )


def fake_state(n_tokens: int, nbytes: int) -> KeptState:
    rng = np.random.default_rng(n_tokens)
    tokens = rng.integers(0, 1000, n_tokens).astype(np.intc)
    return KeptState(tokens, bytearray(rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()))


def test_a_state_larger_than_ram_goes_to_disk_and_larger_than_both_is_not_kept(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    cache = StateCache(identity(tiny_gguf), ram_bytes=5000, disk_bytes=20000, directory=tmp_path)
    cache.put("big", fake_state(10, 8000))
    assert cache.ram_keys() == []
    assert cache.disk_digests() == [key_digest("big")]
    loaded = cache.load("big")
    assert loaded is not None
    assert loaded.data == fake_state(10, 8000).data
    assert list(loaded.tokens) == list(fake_state(10, 8000).tokens)
    cache.put("huge", fake_state(11, 30000))
    assert "huge" not in cache
    assert cache.stats.evicted == 1
    cache.put("big", fake_state(12, 100))  # a newer state replaces the file
    assert cache.ram_keys() == ["big"]
    assert cache.disk_digests() == []
    assert state_files(tmp_path) == []


async def test_cancelled_reply_and_anonymous_requests_keep_states_consistent(
    tiny_gguf: Path, models: Callable[..., ChatModel]
) -> None:
    model = models(tiny_gguf, RAM_ONLY)
    reference = models(tiny_gguf, OFF)
    chats = Conversations(model)
    prompt = chats.prompt("a", QUESTIONS[0])
    generation = model.engine.submit(prompt, max_new_tokens=400, key="a")
    seen = []
    async for delta in generation.stream():
        seen.append(delta)
        if len(seen) == 3:
            generation.cancel()
    partial = await generation.result()
    assert partial.finish_reason == "cancelled"
    chats.histories["a"].append(ChatMessage("bot", partial.text))  # stored as partial
    # A request without a conversation key takes the context too: "a" must be kept first.
    await model.engine.submit(chats.prompt("x", QUESTIONS[3]), max_new_tokens=5).result()

    resumed = await chats.say("a", "Продолжай")
    assert resumed.n_prompt_restored >= len(prompt)
    reference_chats = Conversations(reference)
    reference_chats.histories = {"a": chats.histories["a"][:-2]}
    await reference.engine.submit([5, 6, 7], max_new_tokens=1).result()
    assert (await reference_chats.say("a", "Продолжай")).text == resumed.text


def test_settings_take_sizes_with_units(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.settings import Settings

    monkeypatch.setenv("STATE_CACHE_RAM", "2GB")
    monkeypatch.setenv("STATE_CACHE_DISK", "512MiB")
    monkeypatch.setenv("STATE_CACHE", "off")
    monkeypatch.setenv("WINDOW_LOW_WATERMARK", "0.7")
    monkeypatch.setenv("DATA_DIR", "/srv/domovoy")
    settings = Settings()
    assert settings.cache.state_cache_ram == 2 * 10**9
    assert settings.cache.state_cache_disk == 512 * 2**20
    assert settings.cache.state_cache is False
    assert settings.model.window_low_watermark == 0.7
    assert settings.storage.state_cache_dir == Path("/srv/domovoy/state-cache")
    monkeypatch.setenv("WINDOW_LOW_WATERMARK", "0")
    with pytest.raises(ValueError, match="window_low_watermark"):
        Settings()


def test_bench_command_prints_one_json_object(tiny_gguf: Path) -> None:
    # Correctness only: the figures themselves are measured on the bench model, not here.
    import json

    from typer.testing import CliRunner

    from bot.cli import app

    args = ["bench", "--model", str(tiny_gguf), "--history-tokens", "300", "--json"]
    outcome = CliRunner().invoke(app, [*args, "--users", "2", "--rounds", "1", "--threads", "2"])
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout.strip().splitlines()[-1])
    for name in ("ttft_cold_s", "ttft_cached_s", "raw_tokens_per_s", "pipeline_tokens_per_s"):
        assert report[name] > 0
    assert report["ttft_ratio"] > 0
    assert report["throughput_ratio"] > 0
    assert report["model"]["n_layer"] == 2
    # The cached follow-ups restored the conversation and evaluated only its new end.
    restored = report["follow_up_restored_tokens"]
    assert all(r >= 250 for r in restored)
    evaluated = report["follow_up_evaluated_tokens"]
    assert all(c < f // 3 for c, f in zip(evaluated["cached"], evaluated["cold"], strict=True))
