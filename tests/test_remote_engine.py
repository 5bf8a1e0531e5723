"""ENGINE=remote against real llama-server processes on the tiny test models (no mock server):
the same greedy reply as the local engine, /stop, a killed server, token-exact follow-ups
read from the server's own timings, no reuse across conversations, start-up errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import llama_server
import pytest
from sampling import GREEDY
from tiny_model import TinyModelShape, build_tiny_gguf

from models.prompt.templates import ChatMessage
from models.remote.loader import EngineStartError, RemoteConfig, load_remote_model
from models.runtime.chat_model import ChatModel, load_chat_model
from models.runtime.loader import ModelConfig
from models.runtime.state_cache import StateCacheConfig

N_CTX = 1024
# Slow enough (1 thread) that a reply is still being written when the test acts on it.
SLOW_SHAPE = TinyModelShape(n_embd=512, n_head=8, n_layer=8, n_ff=2048)


@pytest.fixture(scope="module")
def byte_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Byte tokens allowed: replies split UTF-8 characters across tokens."""
    path = tmp_path_factory.mktemp("remote") / "bytes.gguf"
    return build_tiny_gguf(path, suppress_byte_tokens=False)


@pytest.fixture(scope="module")
def slow_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("remote") / "slow.gguf", shape=SLOW_SHAPE)


@pytest.fixture(scope="module")
def server(byte_gguf: Path) -> Iterator[llama_server.LlamaServer]:
    with llama_server.servers(byte_gguf, n_ctx_per_slot=N_CTX) as [started]:
        yield started


def config(path: Path, urls: list[str], **options: object) -> RemoteConfig:
    values: dict[str, object] = {
        "model_path": path,
        "urls": urls,
        "template": "gigasaiga",
        "max_new_tokens": 48,
        "sampling": GREEDY,
        "health_interval": 0.5,
        "read_timeout": 10.0,
        **options,
    }
    return RemoteConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def remote(byte_gguf: Path, server: llama_server.LlamaServer) -> AsyncIterator[ChatModel]:
    model = await load_remote_model(config(byte_gguf, [server.url]))
    yield model
    await model.close()


def prompt(model: ChatModel, key: str, *turns: str, system: str | None = None) -> list[int]:
    roles = ["user", "bot"]
    history = [ChatMessage(roles[i % 2], text) for i, text in enumerate(turns)]
    return model.build_prompt(system, history, key=key).tokens


# The last two make this model write lone byte tokens (not valid UTF-8 alone): both engines
# must decode them the same way.
QUESTIONS = ["Привет! Как дела?", "Напиши стихотворение о зиме.", "ёжик 🦔 日本"]


def splits_characters(model: ChatModel, ids: tuple[int, ...]) -> bool:
    def whole(token: int) -> bool:
        try:
            model.tokenizer.token_bytes([token]).decode("utf-8")  # type: ignore[attr-defined]
        except UnicodeDecodeError:
            return False
        return True

    return not all(whole(token) for token in ids)


async def test_greedy_reply_equals_the_local_engine_token_for_token(
    byte_gguf: Path, remote: ChatModel
) -> None:
    local = load_chat_model(
        ModelConfig(model_path=byte_gguf, n_ctx=N_CTX, n_threads=1, seed=7),
        template="gigasaiga",
        max_new_tokens=48,
        sampling=GREEDY,
        parallel=1,
        state_cache=StateCacheConfig(enabled=False),
    )
    split = 0
    try:
        for i, question in enumerate(QUESTIONS):
            key = f"same:{i}"
            ids = prompt(local, key, question)
            assert prompt(remote, key, question) == ids
            here = local.engine.submit(ids, max_new_tokens=48, key=key)
            there = remote.engine.submit(ids, max_new_tokens=48, key=key)
            streamed = [delta async for delta in there.stream()]
            mine, theirs = await here.result(), await there.result()
            assert theirs.text == mine.text and "".join(streamed) == mine.text
            assert (theirs.n_tokens, theirs.finish_reason) == (mine.n_tokens, mine.finish_reason)
            local_ids = local.engine.transcript(key)
            remote_ids = remote.engine.transcript(key)
            assert local_ids is not None and remote_ids is not None
            assert remote_ids.generated == local_ids.generated
            split += splits_characters(local, local_ids.generated)
        assert split >= 2  # not only easy replies compared
    finally:
        await local.close()


async def test_a_follow_up_evaluates_only_the_new_turn_on_the_server(remote: ChatModel) -> None:
    first_ids = prompt(remote, "follow", "Привет! Как дела?")
    first = await remote.engine.submit(first_ids, max_new_tokens=48, key="follow").result()
    assert first.n_prompt_evaluated == len(first_ids)  # prompt_n of a fresh conversation
    follow_ids = prompt(remote, "follow", "Привет! Как дела?", first.text, "А ещё?")
    transcript = remote.engine.transcript("follow")
    assert transcript is not None
    assert follow_ids[: len(first_ids) + first.n_tokens] == [*first_ids, *transcript.generated]
    new_turn = len(follow_ids) - len(first_ids) - first.n_tokens
    second = await remote.engine.submit(follow_ids, max_new_tokens=48, key="follow").result()
    # timings.prompt_n: the new turn, plus the reply's last token, which the server sampled
    # but never had to evaluate while the reply was written.
    last_evaluated = 1 if first.finish_reason == "length" else 0
    assert second.n_prompt_evaluated == new_turn + last_evaluated, (new_turn, second)
    assert second.n_prompt_evaluated < len(follow_ids) // 3


async def test_another_conversation_never_reuses_a_shared_prefix(remote: ChatModel) -> None:
    system = "Ты — Домовой, помогаешь по дому."
    for key in ("alice", "bob", "carol", "alice-again"):
        ids = prompt(remote, key, "Привет! Как дела?", system=system)
        result = await remote.engine.submit(ids, max_new_tokens=8, key=key).result()
        # Same system prompt and first message, two slots: still evaluated in full.
        assert result.n_prompt_evaluated == len(ids), key


@pytest.fixture(scope="module")
def slow_servers(slow_gguf: Path) -> Iterator[list[llama_server.LlamaServer]]:
    with llama_server.servers(slow_gguf, count=2, n_ctx_per_slot=N_CTX) as started:
        yield started


def slot_busy(server: llama_server.LlamaServer) -> bool:
    return any(slot["is_processing"] for slot in server.slots())


async def test_stop_closes_the_stream_and_frees_the_servers_slot(
    slow_gguf: Path, slow_servers: list[llama_server.LlamaServer]
) -> None:
    served = slow_servers[0]
    model = await load_remote_model(config(slow_gguf, [served.url], max_new_tokens=800))
    try:
        ids = prompt(model, "stop", "Расскажи сказку про кота.")
        handle = model.engine.submit(ids, max_new_tokens=800, key="stop")
        shown = ""
        async for delta in handle.stream():
            shown += delta
            if len(shown) > 10:
                assert slot_busy(served)  # the server is writing it right now
                handle.cancel()
        result = await handle.result()
        assert result.finish_reason == "cancelled"
        assert result.text == shown and 0 < result.n_tokens < 800
        deadline = time.monotonic() + 5
        while slot_busy(served):
            assert time.monotonic() < deadline, "the server went on writing"
            await asyncio.sleep(0.05)
    finally:
        await model.close()


async def test_a_server_killed_mid_reply_cuts_it_and_the_next_goes_elsewhere(
    slow_gguf: Path, tmp_path: Path
) -> None:
    with llama_server.servers(slow_gguf, count=2, n_ctx_per_slot=N_CTX) as pair:
        model = await load_remote_model(
            config(slow_gguf, [s.url for s in pair], max_new_tokens=800)
        )
        try:
            ids = prompt(model, "cut", "Расскажи сказку про кота.")
            handle = model.engine.submit(ids, max_new_tokens=800, key="cut")
            shown = ""
            async for delta in handle.stream():
                shown += delta
                if handle.server is not None and len(shown) > 10:
                    victim = next(s for s in pair if s.url == handle.server)
                    victim.kill()
            result = await handle.result()
            assert result.finish_reason == "cut"
            assert result.text == shown and 0 < result.n_tokens < 800
            again = model.engine.submit(ids, max_new_tokens=8, key="cut")
            assert (await again.result()).finish_reason in ("stop", "length")
            assert again.server is not None and again.server != victim.url
        finally:
            await model.close()


async def test_no_server_at_start_is_one_sentence(byte_gguf: Path) -> None:
    urls = [f"http://127.0.0.1:{llama_server.free_port()}" for _ in range(2)]
    with pytest.raises(EngineStartError) as caught:
        await load_remote_model(config(byte_gguf, urls, connect_timeout=1.0))
    message = str(caught.value)
    assert all(url in message for url in urls)
    assert message.endswith(".") and ". " not in message  # one sentence


async def test_a_server_that_takes_the_connection_and_says_nothing_does_not_hang_the_start(
    byte_gguf: Path, server: llama_server.LlamaServer
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)  # the request, never answered
        await asyncio.sleep(3600)

    mute = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = mute.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(20):
            with pytest.raises(EngineStartError, match="No engine server answered"):
                await load_remote_model(
                    config(byte_gguf, [f"http://127.0.0.1:{port}"], connect_timeout=1.0)
                )
            # Beside a working server, the silent one is down and the other serves.
            urls = [f"http://127.0.0.1:{port}", server.url]
            model = await load_remote_model(config(byte_gguf, urls, connect_timeout=1.0))
            try:
                ids = prompt(model, "mute", "Привет!")
                result = await model.engine.submit(ids, max_new_tokens=4, key="mute").result()
                assert result.n_tokens > 0
            finally:
                await model.close()
    finally:
        mute.close()


async def test_a_server_running_another_vocabulary_is_refused_with_one_sentence(
    tmp_path: Path, server: llama_server.LlamaServer
) -> None:
    other = build_tiny_gguf(tmp_path / "other.gguf", shape=TinyModelShape(vocab_size=900))
    with pytest.raises(EngineStartError) as caught:
        await load_remote_model(config(other, [server.url]))
    message = str(caught.value)
    assert server.url in message and "same GGUF" in message
    assert message.endswith(".") and message.count(". ") == 0


async def test_a_wrong_api_key_is_a_clear_error(byte_gguf: Path) -> None:
    with llama_server.servers(byte_gguf, api_key="right-key") as [guarded]:
        with pytest.raises(EngineStartError, match="ENGINE_API_KEY"):
            await load_remote_model(config(byte_gguf, [guarded.url], api_key="wrong-key"))
        model = await load_remote_model(config(byte_gguf, [guarded.url], api_key="right-key"))
        try:
            ids = prompt(model, "k", "Привет!")
            result = await model.engine.submit(ids, max_new_tokens=4, key="k").result()
            assert result.n_tokens > 0
        finally:
            await model.close()


async def test_the_openai_dialect_streams_the_same_reply(
    byte_gguf: Path, server: llama_server.LlamaServer, remote: ChatModel
) -> None:
    """/v1/completions as vLLM speaks it, here answered by llama-server's own: token-id prompt,
    generated ids in every chunk (vLLM's token_ids; llama-server's __verbose.tokens)."""
    openai = await load_remote_model(config(byte_gguf, [server.url], api="openai"))
    try:
        for i, question in enumerate(QUESTIONS):
            ids = prompt(remote, f"native:{i}", question)
            native = await remote.engine.submit(ids, max_new_tokens=48, key=f"n:{i}").result()
            handle = openai.engine.submit(ids, max_new_tokens=48, key=f"o:{i}")
            streamed = "".join([delta async for delta in handle.stream()])
            result = await handle.result()
            assert streamed == result.text == native.text
            assert result.n_tokens == native.n_tokens
            assert openai.engine.transcript(f"o:{i}") is not None
    finally:
        await openai.close()


async def test_forget_overwrites_the_slots_the_conversation_used(
    remote: ChatModel, server: llama_server.LlamaServer
) -> None:
    ids = prompt(remote, "gone", "Привет! Как дела?")
    await remote.engine.submit(ids, max_new_tokens=8, key="gone").result()

    def cached() -> list[int]:  # /slots: the tokens each slot holds (prompt and reply)
        return [slot.get("n_prompt_tokens") or 0 for slot in server.slots()]

    before = cached()
    assert max(before) >= len(ids)
    await remote.engine.forget("gone")
    # Without --slot-save-path llama-server refuses /slots actions; a one-token prompt then
    # replaces the conversation's cells.
    after = cached()
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert len(changed) == 1 and changed[0][0] >= len(ids) and changed[0][1] <= 1
    assert remote.engine.transcript("gone") is None
