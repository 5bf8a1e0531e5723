from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from family_models import StandIn, build_stand_in
from sampling import GREEDY
from tiny_model import build_tiny_gguf, build_tiny_lora

from models.prompt.tokenizer import LlamaTokenizer
from models.runtime.chat_model import ChatModel, load_chat_model
from models.runtime.loader import ModelConfig
from models.runtime.state_cache import StateCacheConfig


@pytest.fixture(scope="session")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str | None], StandIn]:
    built: dict[tuple[str, str | None], StandIn] = {}

    def get(family: str, embedded: str | None = None) -> StandIn:
        key = (family, embedded)
        if key not in built:
            folder = tmp_path_factory.mktemp(f"family-{family}")
            built[key] = build_stand_in(family, folder, chat_template=embedded)
        return built[key]

    return get


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lora(tmp_path_factory.mktemp("lora") / "tiny-lora.gguf")


@pytest.fixture(scope="session")
def tokenizer(tiny_gguf: Path) -> LlamaTokenizer:
    return LlamaTokenizer.from_file(tiny_gguf)


@pytest.fixture
async def chat_model(tiny_gguf: Path) -> AsyncIterator[ChatModel]:
    model = load_chat_model(
        ModelConfig(model_path=tiny_gguf, n_ctx=2048, n_threads=2, seed=7),
        template="gigasaiga",
        max_new_tokens=64,
        sampling=GREEDY,
        parallel=1,  # the tests of one sequence's behaviour; test_batching covers several
    )
    yield model
    await model.close()


@pytest.fixture
async def model_factory(tiny_gguf: Path) -> AsyncIterator[Callable[..., ChatModel]]:
    """Tiny models with greedy sampling, `parallel` sequences and the given state cache; all
    closed at the end of the test."""
    opened: list[ChatModel] = []

    def factory(
        parallel: int, cache: StateCacheConfig | None = None, max_new_tokens: int = 64
    ) -> ChatModel:
        model = load_chat_model(
            ModelConfig(model_path=tiny_gguf, n_ctx=2048, n_threads=2, seed=7),
            template="gigasaiga",
            max_new_tokens=max_new_tokens,
            sampling=GREEDY,
            state_cache=cache or StateCacheConfig(enabled=False),
            parallel=parallel,
        )
        opened.append(model)
        return model

    yield factory
    for model in opened:
        await model.close()
