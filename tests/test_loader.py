from __future__ import annotations

from pathlib import Path

import pytest
from tiny_model import build_tiny_lora

from models.errors import ModelLoadError
from models.files.gguf_info import check_gguf
from models.runtime.chat_model import fit_context, load_chat_model
from models.runtime.loader import ModelConfig, load_llama


def test_missing_model_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ModelLoadError, match=r"does not exist") as info:
        load_llama(ModelConfig(model_path=missing))
    assert str(missing) in str(info.value)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("<html>404 Not Found</html>")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        check_gguf(path)


def test_old_ggml_container_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ruGPT-3.5-13B-lora-q4_0.bin"
    path.write_bytes(b"tjgg" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="old GGML format"):
        check_gguf(path)


def test_truncated_gguf_is_a_clear_error(tmp_path: Path, tiny_gguf: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="could not load the model file") as info:
        load_llama(ModelConfig(model_path=broken, n_ctx=256))
    assert str(broken) in str(info.value)


@pytest.mark.parametrize("keep", [1000, 300_000])
def test_truncated_gguf_fails_loading_the_chat_model_with_a_sentence(
    tmp_path: Path, tiny_gguf: Path, keep: int
) -> None:
    # The vocabulary is read first (`domovoy prompt`, the bot's start): it must not leak
    # llama-cpp-python's bare ValueError either.
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:keep])
    with pytest.raises(ModelLoadError, match="could not read the vocabulary") as info:
        load_chat_model(ModelConfig(model_path=broken), template="gigasaiga", max_new_tokens=64)
    assert str(broken) in str(info.value)


def test_lora_for_another_architecture_is_refused(tmp_path: Path, tiny_gguf: Path) -> None:
    lora = build_tiny_lora(tmp_path / "llama-lora.gguf", architecture="llama")
    with pytest.raises(ModelLoadError, match="LoRA adapter") as info:
        load_llama(ModelConfig(model_path=tiny_gguf, n_ctx=256, lora_path=lora))
    assert str(lora) in str(info.value)


def test_missing_lora_file(tmp_path: Path, tiny_gguf: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"LoRA adapter file .* does not exist"):
        load_llama(ModelConfig(model_path=tiny_gguf, lora_path=tmp_path / "none.gguf"))


def test_context_is_capped_at_the_trained_length(tiny_gguf: Path) -> None:
    config = fit_context(ModelConfig(model_path=tiny_gguf, n_ctx=8192), trained=2048)
    assert config.n_ctx == 2048
    assert fit_context(ModelConfig(model_path=tiny_gguf, n_ctx=1024), trained=2048).n_ctx == 1024


async def test_loaded_model_never_exceeds_trained_context(tiny_gguf: Path) -> None:
    model = load_chat_model(
        ModelConfig(model_path=tiny_gguf, n_ctx=4096, n_threads=1),
        template="gigasaiga",
        max_new_tokens=64,
    )
    try:
        assert model.engine.n_ctx == 2048
        assert model.window.n_ctx == 2048
    finally:
        await model.close()


def test_model_file_given_as_lora_is_refused(tiny_gguf: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a LoRA adapter"):
        load_llama(ModelConfig(model_path=tiny_gguf, n_ctx=256, lora_path=tiny_gguf))


def test_lora_of_wrong_shape_is_refused(tmp_path: Path, tiny_gguf: Path) -> None:
    from tiny_model import TinyModelShape

    lora = build_tiny_lora(tmp_path / "wide.gguf", shape=TinyModelShape(n_embd=96))
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_llama(ModelConfig(model_path=tiny_gguf, n_ctx=256, lora_path=lora))
