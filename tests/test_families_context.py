"""The window size and the registry against the family stand-ins (`pytest -k families`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from family_models import FAMILIES, StandIn, build_stand_in

from models.files.context import RAM_SHARE, choose_n_ctx
from models.files.gguf_info import read_gguf_info
from models.files.registry import RUNTIME_OVERHEAD
from models.prompt.templates import ChatMessage, get_template
from models.prompt.tokenizer import LlamaTokenizer

HISTORY = [
    ChatMessage("user", "Привет! Как дела?"),
    ChatMessage("bot", "Хорошо, спасибо.  А у тебя?"),
    ChatMessage("user", "Расскажи сказку про кота."),
]


def test_families_default_context_is_trained_capped_by_ram(
    stand_in: Callable[[str, str | None], StandIn],
) -> None:
    model = stand_in("qwen3", None)
    info = read_gguf_info(model.gguf_path)
    trained = int(info.context_length or 0)
    roomy = choose_n_ctx(model.gguf_path, None, ram=64 * 10**9)
    assert (roomy.n_ctx, roomy.trained) == (trained, 4096)
    assert roomy.ram_limit > trained
    # A machine whose spare RAM holds 1000 tokens of KV cache gets 768 (a multiple of 256).
    ram = int((info.file_size + RUNTIME_OVERHEAD + 2 * 1000 * info.kv_bytes_per_token) / RAM_SHARE)
    tight = choose_n_ctx(model.gguf_path, None, ram=ram + 2)
    assert tight.ram_limit in (999, 1000)
    assert tight.n_ctx == 768
    assert "RAM limit" in tight.describe()
    # An explicit N_CTX wins, only capped at the trained context.
    assert choose_n_ctx(model.gguf_path, 1000, ram=ram).n_ctx == 1000
    assert choose_n_ctx(model.gguf_path, 100_000, ram=ram).n_ctx == trained


def test_families_models_info_shows_trained_and_chosen_context(
    stand_in: Callable[[str, str | None], StandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from bot.cli import app

    monkeypatch.delenv("N_CTX", raising=False)
    model = stand_in("llama3-bpe", None)
    result = CliRunner().invoke(app, ["models", "info", str(model.gguf_path)])
    assert result.exit_code == 0, result.output
    assert "context length:  4096 (trained)" in result.output
    assert "KV cache:        256 bytes per token (f16)" in result.output
    assert "N_CTX here:      4096 tokens (the trained context" in result.output
    monkeypatch.setenv("N_CTX", "1024")
    result = CliRunner().invoke(app, ["models", "info", str(model.gguf_path)])
    assert "N_CTX here:      1024 tokens (N_CTX=1024;" in result.output


def test_families_registry_marks_the_stand_ins_it_is_tested_on(
    stand_in: Callable[[str, str | None], StandIn],
) -> None:
    """Each entry's family is a stand-in of these tests, and its template works on it."""
    from family_models import tested_registry_names

    from models.files.registry import REGISTRY

    for entry in REGISTRY:
        assert entry.family, entry.name
        if entry.family == "gpt2-bpe":
            continue  # tiny_model's GPT-2, run by the engine and window tests
        assert entry.family in FAMILIES, entry.name
        assert entry.name in tested_registry_names(), entry.name
        tokenizer = LlamaTokenizer.from_file(stand_in(entry.family, None).gguf_path)
        if entry.template != "gguf":
            prompt = get_template(entry.template, tokenizer).encode(HISTORY, tokenizer)
            assert len(prompt) > 20


def test_families_gigachat_20b_is_deepseek_moe_v1(
    stand_in: Callable[[str, str | None], StandIn],
) -> None:
    """GigaChat-20B-A3B's config says DeepseekForCausalLM (28 layers, 16 heads, 8 KV heads of
    128, 131072 positions); its GGUF is llama.cpp's `deepseek`, not DeepSeek-2 with MLA."""
    from models.files.registry import find_entry

    entry = find_entry("gigachat-20b-a3b")
    assert entry is not None and entry.family == "gigachat-moe"
    assert FAMILIES[entry.family].arch == "deepseek" and not FAMILIES[entry.family].mla
    assert (entry.context_length, entry.kv_bytes_per_token) == (131072, 114_688)
    info = read_gguf_info(stand_in(entry.family, None).gguf_path)
    assert info.architecture == "deepseek"
    # The stand-in's cache is per-head keys and values of its grouped-query attention.
    from family_weights import N_EMBD, N_HEAD, N_HEAD_KV, N_LAYER

    assert info.kv_bytes_per_token == 2 * N_LAYER * 2 * N_HEAD_KV * (N_EMBD // N_HEAD)
    assert FAMILIES["gigachat3-mla"].arch == "deepseek2" and FAMILIES["gigachat3-mla"].mla


def test_families_saiga_mistral_uses_the_format_it_was_trained_on(
    stand_in: Callable[[str, str | None], StandIn],
) -> None:
    """rulm trains Saiga Mistral 7B with saiga_v2: no newline between turns, `<s>bot\\n`."""
    from models.files.registry import find_entry

    entry = find_entry("saiga-mistral-7b")
    assert entry is not None and entry.template == "saiga_v2"
    tokenizer = LlamaTokenizer.from_file(stand_in(entry.family, None).gguf_path)
    text = get_template(entry.template, tokenizer).render(HISTORY)
    assert text.startswith("<s>user\nПривет! Как дела?</s><s>bot\nХорошо")
    assert text.endswith("</s><s>bot\n")


def test_families_registry_caps_a_context_the_file_overstates(
    stand_in: Callable[[str, str | None], StandIn],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Mistral-Nemo-derived GGUF may declare 1,024,000 tokens; the registry knows 131072."""
    from typer.testing import CliRunner

    from bot.cli import app
    from models.files.registry import find_entry

    entry = find_entry("saiga-nemo-12b")
    assert entry is not None and entry.context_length == 131072
    built = build_stand_in(entry.family, tmp_path / "build", n_ctx=1_024_000)
    # Where `models download` puts it, and a copy under its own file name elsewhere.
    for path in (
        tmp_path / "IlyaGusev--saiga_nemo_12b_gguf" / "model-00001-of-00001.gguf",
        tmp_path / "elsewhere" / "saiga_nemo_12b.Q4_K_M.gguf",
    ):
        path.parent.mkdir()
        shutil.copy(built.gguf_path, path)
        choice = choose_n_ctx(path, None, ram=10**13)
        assert (choice.trained, choice.n_ctx, choice.header_context) == (131072, 131072, 1_024_000)
        assert "registry entry saiga-nemo-12b" in choice.trained_line()
        assert choose_n_ctx(path, 500_000, ram=10**13).n_ctx == 131072
    # A file the registry does not know keeps its header's figure.
    assert choose_n_ctx(built.gguf_path, None, ram=10**13).n_ctx == 1_024_000
    monkeypatch.delenv("N_CTX", raising=False)
    result = CliRunner().invoke(app, ["models", "info", str(path)])
    assert result.exit_code == 0, result.output
    assert "context length:  1024000 (trained)" in result.output
    assert (
        "trained limit:   131072 tokens (registry entry saiga-nemo-12b; the file declares 1024000)"
        in result.output
    )


def test_families_q8_0_kv_cache_fits_more_context(
    stand_in: Callable[[str, str | None], StandIn],
) -> None:
    """KV_TYPE=q8_0 keeps 34 bytes per 32 values: the RAM limit grows by 32/17."""
    model = stand_in("qwen3", None)
    info = read_gguf_info(model.gguf_path)
    ram = int((info.file_size + RUNTIME_OVERHEAD + 2 * 1000 * info.kv_bytes_per_token) / RAM_SHARE)
    f16 = choose_n_ctx(model.gguf_path, None, ram=ram + 2)
    q8 = choose_n_ctx(model.gguf_path, None, ram=ram + 2, kv_type="q8_0")
    assert q8.kv_bytes_per_token == info.kv_bytes_per_token * 17 // 32
    assert f16.ram_limit in (999, 1000) and q8.ram_limit in range(1880, 1884)
    assert (f16.n_ctx, q8.n_ctx) == (768, 1792)
    assert "q8_0" in q8.describe()


def test_families_qwen3_entries_have_qwen3s_context() -> None:
    """Qwen3 8B/32B configs say max_position_embeddings 40960 (their GGUFs' context_length);
    capping at a smaller registry figure would throw away 8k tokens the model handles."""
    from models.files.registry import REGISTRY

    qwen3 = [entry for entry in REGISTRY if entry.family == "qwen3"]
    assert {entry.name for entry in qwen3} == {"t-lite-it-2.1", "t-pro-it-2.0"}
    assert {entry.context_length for entry in qwen3} == {40960}
