"""PEFT LoRA -> llama.cpp LoRA GGUF.

The light tests write PEFT-shaped adapters by hand (safetensors, no torch); the `heavy` ones
prove the result against transformers + PEFT, an independent implementation.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from llama_cpp import Llama
from safetensors.numpy import save_file
from tiny_model import TinyModelShape
from typer.testing import CliRunner

from bot.cli import app
from models.convert.lora import LoraConversionError, convert_lora
from models.convert.torch_checkpoint import CheckpointError, load_torch_state_dict
from models.errors import ModelError

SHAPE = TinyModelShape()
PREFIX = "base_model.model.transformer.h"
# (PEFT module path, n_in, n_out) for the tiny model's shape.
MODULES = {
    "attn.c_attn": (SHAPE.n_embd, 3 * SHAPE.n_embd),
    "attn.c_proj": (SHAPE.n_embd, SHAPE.n_embd),
    "mlp.c_fc": (SHAPE.n_embd, SHAPE.n_ff),
    "mlp.c_proj": (SHAPE.n_ff, SHAPE.n_embd),
}
GGUF_NAMES = {
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}


def peft_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "ai-forever/ruGPT-3.5-13B",
        "r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.05,
        "target_modules": ["c_attn", "c_proj", "c_fc"],
        "fan_in_fan_out": True,
        "bias": "none",
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    config.update(overrides)
    return config


def peft_tensors(rank: int = 4, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(SHAPE.n_layer):
        for module, (n_in, n_out) in MODULES.items():
            key = f"{PREFIX}.{layer}.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.normal(0, 0.3, (rank, n_in)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.normal(0, 0.3, (n_out, rank)).astype(np.float32)
    return tensors


def write_adapter(
    folder: Path, config: dict[str, Any], tensors: dict[str, np.ndarray] | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(
        peft_tensors() if tensors is None else tensors, str(folder / "adapter_model.safetensors")
    )
    return folder


def read_gguf(path: Path) -> tuple[gguf.GGUFReader, dict[str, np.ndarray]]:
    reader = gguf.GGUFReader(path)
    return reader, {t.name: np.array(t.data) for t in reader.tensors}


def field(reader: gguf.GGUFReader, key: str) -> Any:
    value = reader.fields[key]
    return value.contents()


def test_matrices_map_without_transpose(tmp_path: Path) -> None:
    tensors = peft_tensors()
    adapter = write_adapter(tmp_path / "adapter", peft_config())
    convert_lora(adapter, tmp_path / "lora.gguf")
    reader, written = read_gguf(tmp_path / "lora.gguf")
    assert field(reader, "general.type") == "adapter"
    assert field(reader, "adapter.type") == "lora"
    assert field(reader, "general.architecture") == "gpt2"
    assert field(reader, "adapter.lora.alpha") == pytest.approx(8.0)
    assert len(written) == 2 * SHAPE.n_layer * len(MODULES)
    for layer in range(SHAPE.n_layer):
        for module, name in GGUF_NAMES.items():
            source = f"{PREFIX}.{layer}.{module}"
            target = f"blk.{layer}.{name}.weight"
            np.testing.assert_array_equal(
                written[f"{target}.lora_a"], tensors[f"{source}.lora_A.weight"]
            )
            np.testing.assert_array_equal(
                written[f"{target}.lora_b"], tensors[f"{source}.lora_B.weight"]
            )


def write_bf16_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors layout by hand (numpy has no bfloat16): header, then the upper halves
    of the float32 values, which are the bf16 values when the lower halves are zero."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    chunks, offset = [], 0
    for name, array in tensors.items():
        bits = np.ascontiguousarray(array, dtype="<f4").view("<u4")
        assert not (bits & 0xFFFF).any(), "the test values must be exact in bf16"
        chunk = (bits >> 16).astype("<u2").tobytes()
        header[name] = {
            "dtype": "BF16",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(chunk)],
        }
        chunks.append(chunk)
        offset += len(chunk)
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + b"".join(chunks))


def test_bf16_safetensors_adapter_converts_exactly(tmp_path: Path) -> None:
    # Values a bf16 holds exactly: small multiples of 1/64.
    tensors = {
        name: (np.round(value * 64) / 64).astype(np.float32)
        for name, value in peft_tensors().items()
    }
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(peft_config()))
    write_bf16_safetensors(adapter / "adapter_model.safetensors", tensors)
    with pytest.raises(TypeError, match="bfloat16"):  # why the converter needs its own reader
        from safetensors.numpy import load_file

        load_file(str(adapter / "adapter_model.safetensors"))
    convert_lora(adapter, tmp_path / "lora.gguf")
    _, written = read_gguf(tmp_path / "lora.gguf")
    for layer in range(SHAPE.n_layer):
        for module, name in GGUF_NAMES.items():
            for half in ("a", "b"):
                np.testing.assert_array_equal(
                    written[f"blk.{layer}.{name}.weight.lora_{half}"],
                    tensors[f"{PREFIX}.{layer}.{module}.lora_{half.upper()}.weight"],
                )


def test_rslora_alpha_gives_alpha_over_sqrt_r(tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "adapter", peft_config(r=4, lora_alpha=8, use_rslora=True))
    convert_lora(adapter, tmp_path / "lora.gguf")
    reader, _ = read_gguf(tmp_path / "lora.gguf")
    # llama.cpp scales by alpha / r; PEFT's rsLoRA by 8 / sqrt(4) = 4, so alpha must be 16.
    assert field(reader, "adapter.lora.alpha") / 4 == pytest.approx(8 / math.sqrt(4))


def test_rank_pattern_with_rslora_folds_scale_into_b(tmp_path: Path) -> None:
    tensors = peft_tensors(rank=4)
    rng = np.random.default_rng(9)
    key = f"{PREFIX}.1.mlp.c_fc"
    tensors[f"{key}.lora_A.weight"] = rng.normal(0, 0.3, (16, SHAPE.n_embd)).astype(np.float32)
    tensors[f"{key}.lora_B.weight"] = rng.normal(0, 0.3, (SHAPE.n_ff, 16)).astype(np.float32)
    config = peft_config(use_rslora=True, rank_pattern={"h.1.mlp.c_fc": 16})
    convert_lora(write_adapter(tmp_path / "a", config, tensors), tmp_path / "lora.gguf")
    reader, written = read_gguf(tmp_path / "lora.gguf")
    alpha = field(reader, "adapter.lora.alpha")
    # What llama.cpp will apply for the rank-16 pair must equal PEFT's 8 / sqrt(16).
    b = written["blk.1.ffn_up.weight.lora_b"]
    applied = (alpha / 16) * b
    np.testing.assert_allclose(
        applied, (8 / math.sqrt(16)) * tensors[f"{key}.lora_B.weight"], rtol=1e-6
    )


def test_alpha_pattern_scales_each_module_as_peft_does(tmp_path: Path) -> None:
    tensors = peft_tensors(rank=4)
    # PEFT matches keys as regexes ending at a module name; "c_proj" alone would also match
    # the attention projection, so the MLP one is named with its parent.
    config = peft_config(alpha_pattern={"h.0.attn.c_attn": 32, r"h\.\d\.mlp\.c_proj": 2})
    convert_lora(write_adapter(tmp_path / "a", config, tensors), tmp_path / "lora.gguf")
    reader, written = read_gguf(tmp_path / "lora.gguf")
    alpha = field(reader, "adapter.lora.alpha")
    expected = {
        ("blk.0.attn_qkv", "0.attn.c_attn"): 32 / 4,
        ("blk.1.attn_qkv", "1.attn.c_attn"): 8 / 4,
        ("blk.0.ffn_down", "0.mlp.c_proj"): 2 / 4,
        ("blk.1.ffn_down", "1.mlp.c_proj"): 2 / 4,
        ("blk.1.attn_output", "1.attn.c_proj"): 8 / 4,
    }
    for (gguf_name, peft_name), scale in expected.items():
        applied = (alpha / 4) * written[f"{gguf_name}.weight.lora_b"]
        np.testing.assert_allclose(
            applied, scale * tensors[f"{PREFIX}.{peft_name}.lora_B.weight"], rtol=1e-6
        )


def test_init_without_base_changes_converts(tmp_path: Path) -> None:
    for init in (True, False, "gaussian", "eva", "orthogonal"):
        adapter = write_adapter(tmp_path / str(init), peft_config(init_lora_weights=init))
        convert_lora(adapter, tmp_path / f"{init}.gguf")
        assert (tmp_path / f"{init}.gguf").is_file()


def logits(model: Path, lora: Path | None, scale: float = 1.0) -> np.ndarray:
    llama = Llama(
        model_path=str(model),
        lora_path=str(lora) if lora else None,
        lora_scale=scale,
        n_ctx=128,
        n_threads=2,
        logits_all=True,
        verbose=False,
    )
    ids = llama.tokenize("Привет! Как дела?".encode(), add_bos=False)
    llama.eval(ids)
    return np.array(llama.scores[: len(ids)])


def test_llama_cpp_applies_converted_adapter(tmp_path: Path, tiny_gguf: Path) -> None:
    adapter = write_adapter(tmp_path / "adapter", peft_config())
    convert_lora(adapter, tmp_path / "lora.gguf")
    base = logits(tiny_gguf, None)
    adapted = logits(tiny_gguf, tmp_path / "lora.gguf")
    assert np.abs(adapted - base).max() > 1.0
    np.testing.assert_allclose(logits(tiny_gguf, tmp_path / "lora.gguf", 0.0), base, atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"target_modules": ["q_proj", "v_proj"]}, "another architecture"),
        ({"use_dora": True}, "DoRA"),
        ({"bias": "lora_only"}, "biases"),
        ({"modules_to_save": ["lm_head"]}, "saves whole modules"),
        ({"peft_type": "IA3"}, "only LoRA"),
        ({"target_modules": ["c_attn", "lm_head"]}, "only c_attn, c_proj and c_fc"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa' \\(PiSSA\\)"),
        ({"init_lora_weights": "pissa_niter_16"}, "init_lora_weights='pissa_niter_16'"),
        ({"init_lora_weights": "olora"}, "init_lora_weights='olora' \\(OLoRA\\)"),
        ({"init_lora_weights": "corda"}, "init_lora_weights='corda' \\(CorDA\\)"),
        ({"init_lora_weights": "loftq"}, "init_lora_weights='loftq' \\(LoftQ\\)"),
        ({"enable_lora": [True, False, True]}, "early PEFT version"),
    ],
)
def test_refuses_what_it_cannot_convert(
    tmp_path: Path, overrides: dict[str, Any], expected: str
) -> None:
    adapter = write_adapter(tmp_path / "adapter", peft_config(**overrides))
    with pytest.raises(LoraConversionError, match=expected):
        convert_lora(adapter, tmp_path / "lora.gguf")
    assert not (tmp_path / "lora.gguf").exists()


def test_refuses_llama_tensors_even_with_a_regex_target(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": rng.random((4, 64)),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": rng.random((64, 4)),
    }
    config = peft_config(target_modules=".*q_proj")
    adapter = write_adapter(tmp_path / "adapter", config, tensors)
    with pytest.raises(LoraConversionError, match="not a LoRA matrix of a GPT-2"):
        convert_lora(adapter, tmp_path / "lora.gguf")


def test_refuses_dora_magnitudes_and_unpaired_matrices(tmp_path: Path) -> None:
    tensors = peft_tensors()
    tensors[f"{PREFIX}.0.attn.c_attn.lora_magnitude_vector"] = np.ones(192, dtype=np.float32)
    with pytest.raises(LoraConversionError, match="DoRA"):
        convert_lora(write_adapter(tmp_path / "a", peft_config(), tensors), tmp_path / "x.gguf")
    tensors = peft_tensors()
    del tensors[f"{PREFIX}.1.mlp.c_fc.lora_B.weight"]
    with pytest.raises(LoraConversionError, match="only one of lora_A/lora_B"):
        convert_lora(write_adapter(tmp_path / "b", peft_config(), tensors), tmp_path / "x.gguf")


def test_refuses_a_non_gpt2_fused_attention(tmp_path: Path) -> None:
    tensors = peft_tensors()
    tensors[f"{PREFIX}.0.attn.c_attn.lora_B.weight"] = np.ones((64, 4), dtype=np.float32)
    with pytest.raises(LoraConversionError, match="another architecture"):
        convert_lora(write_adapter(tmp_path / "a", peft_config(), tensors), tmp_path / "x.gguf")


def test_missing_pieces_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(LoraConversionError, match="does not exist"):
        convert_lora(tmp_path / "nowhere", tmp_path / "x.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoraConversionError, match=r"no adapter_config\.json"):
        convert_lora(tmp_path / "empty", tmp_path / "x.gguf")
    (tmp_path / "empty" / "adapter_config.json").write_text(json.dumps(peft_config()))
    with pytest.raises(LoraConversionError, match=r"neither adapter_model\.safetensors"):
        convert_lora(tmp_path / "empty", tmp_path / "x.gguf")
    (tmp_path / "empty" / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LoraConversionError, match="could not be read as safetensors"):
        convert_lora(tmp_path / "empty", tmp_path / "x.gguf")


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


def test_malicious_bin_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"x": _RunsShell(f"touch {marker}")}, protocol=2)
    # The payload is live: an ordinary unpickler runs the command.
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(peft_config()))
    with zipfile.ZipFile(adapter / "adapter_model.bin", "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    with pytest.raises(CheckpointError, match="more than plain tensors"):
        convert_lora(adapter, tmp_path / "lora.gguf")
    assert not marker.exists()

    (adapter / "adapter_model.bin").write_bytes(payload)  # a bare pickle, pre-zip torch style
    with pytest.raises(ModelError, match="not in torch's zip format"):
        convert_lora(adapter, tmp_path / "lora.gguf")
    assert not marker.exists()


def test_cli_converts_and_refuses(tmp_path: Path) -> None:
    runner = CliRunner()
    adapter = write_adapter(tmp_path / "adapter", peft_config())
    out = tmp_path / "out" / "lora.gguf"
    result = runner.invoke(app, ["models", "convert-lora", str(adapter), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"LORA_PATH={out.resolve()}" in result.output
    assert gguf.GGUFReader(out).fields["adapter.type"].contents() == "lora"

    bad = write_adapter(tmp_path / "dora", peft_config(use_dora=True))
    result = runner.invoke(app, ["models", "convert-lora", str(bad), "-o", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "DoRA" in result.output
    assert "Traceback" not in result.output


# ---- proofs against transformers + PEFT (heavy) ----


def _peft_model(hf_dir: Path, rslora: bool, seed: int) -> Any:
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
        lora_dropout=0.0,
        use_rslora=rslora,
    )
    model = peft.get_peft_model(base, config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any, Any]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from hf_gpt2 import build_hf_gpt2, write_hf_gpt2_gguf

    folder = tmp_path_factory.mktemp("hf-gpt2")
    model, tokenizer = build_hf_gpt2(folder / "hf")
    base_gguf = write_hf_gpt2_gguf(model, tokenizer, folder / "base-f32.gguf")
    return folder / "hf", base_gguf, model, tokenizer


PROMPTS = [
    "Привет! Как дела?",
    "The quick brown fox jumps",
    "<s>user\nРасскажи мне сказку про кота</s>\n<s>bot",
    "Москва — столица России.",
]
# f32 weights, but llama.cpp keeps the KV cache in f16 and tabulates GELU in f16.
LOGIT_TOLERANCE = 0.05
GREEDY_MARGIN = 0.1


@pytest.mark.heavy
@pytest.mark.parametrize(("rslora", "weights"), [(False, "safetensors"), (True, "bin")])
def test_matches_transformers_with_peft(
    tmp_path: Path, hf_base: tuple[Path, Path, Any, Any], rslora: bool, weights: str
) -> None:
    from hf_gpt2 import greedy_agreement, hf_logits, llama_logits

    hf_dir, base_gguf, base_model, tokenizer = hf_base
    model = _peft_model(hf_dir, rslora, seed=11 + rslora)
    model.save_pretrained(tmp_path / "adapter", safe_serialization=(weights == "safetensors"))
    assert (tmp_path / "adapter" / f"adapter_model.{weights}").is_file()
    convert_lora(tmp_path / "adapter", tmp_path / "lora.gguf")

    llama = Llama(
        model_path=str(base_gguf),
        lora_path=str(tmp_path / "lora.gguf"),
        n_ctx=128,
        n_threads=2,
        logits_all=True,
        verbose=False,
    )
    checked = 0
    worst = 0.0
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        assert ids == llama.tokenize(prompt.encode(), add_bos=False, special=True)
        expected = hf_logits(model, ids)
        # The adapter matters: without it the logits are far off.
        assert np.abs(hf_logits(base_model, ids) - expected).max() > 1.0
        got = llama_logits(llama, ids)
        worst = max(worst, float(np.abs(got - expected).max()))
        checked += greedy_agreement(model, llama, ids, steps=10, margin=GREEDY_MARGIN)
    print(f"max |logit difference| with rslora={rslora}: {worst:.4f}; greedy checked {checked}")
    assert worst < LOGIT_TOLERANCE
    assert checked >= 20

    # The mistake this converter exists to avoid: transposing the Conv1D pairs, as llama.cpp's
    # own converter does, still loads for the square c_proj but is far off.
    transposed = _transpose_square_pairs(tmp_path / "lora.gguf", tmp_path / "transposed.gguf")
    wrong = Llama(
        model_path=str(base_gguf),
        lora_path=str(transposed),
        n_ctx=128,
        n_threads=2,
        logits_all=True,
        verbose=False,
    )
    ids = tokenizer.encode(PROMPTS[0])
    off = np.abs(llama_logits(wrong, ids) - hf_logits(model, ids)).max()
    assert off > 20 * LOGIT_TOLERANCE


def _transpose_square_pairs(source: Path, target: Path) -> Path:
    reader = gguf.GGUFReader(source)
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    writer = gguf.GGUFWriter(str(target), "gpt2")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", field(reader, "adapter.lora.alpha"))
    for name, value in tensors.items():
        if ".attn_output." in name:
            pair = tensors[
                name.replace("lora_a", "lora_b")
                if name.endswith("lora_a")
                else name.replace("lora_b", "lora_a")
            ]
            value = np.ascontiguousarray(pair.T)
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


@pytest.mark.heavy
def test_safe_reader_matches_torch_load(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    state = {
        "a": torch.randn(3, 5, generator=generator),
        "half": torch.randn(4, 2, generator=generator).half(),
        "bf16": torch.randn(6, generator=generator).bfloat16(),
        "transposed": torch.randn(4, 6, generator=generator).t(),
        "slice": torch.randn(10, 8, generator=generator)[2:5],
    }
    torch.save(state, tmp_path / "w.bin")
    loaded = load_torch_state_dict(tmp_path / "w.bin")
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        np.testing.assert_array_equal(loaded[name], tensor.float().numpy(), err_msg=name)


@pytest.mark.heavy
def test_bf16_reader_matches_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    generator = torch.Generator().manual_seed(5)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(peft_config()))
    state = {
        name: torch.randn(value.shape, generator=generator).bfloat16()
        for name, value in peft_tensors().items()
    }
    save_torch(state, str(adapter / "adapter_model.safetensors"))
    convert_lora(adapter, tmp_path / "lora.gguf")
    _, written = read_gguf(tmp_path / "lora.gguf")
    for layer in range(SHAPE.n_layer):
        for module, name in GGUF_NAMES.items():
            for half in ("a", "b"):
                expected = state[f"{PREFIX}.{layer}.{module}.lora_{half.upper()}.weight"]
                np.testing.assert_array_equal(
                    written[f"blk.{layer}.{name}.weight.lora_{half}"], expected.float().numpy()
                )


def _llama_with(base_gguf: Path, lora: Path) -> Llama:
    return Llama(
        model_path=str(base_gguf),
        lora_path=str(lora),
        n_ctx=128,
        n_threads=2,
        logits_all=True,
        verbose=False,
    )


def _train_a_little(model: Any, seed: int) -> None:
    """Stand in for training: move every LoRA matrix away from its initialization."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)


@pytest.mark.heavy
def test_pissa_adapter_would_be_silently_wrong(
    tmp_path: Path, hf_base: tuple[Path, Path, Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PiSSA moves each weight's principal part into the adapter: converted as a plain LoRA it
    is applied to the untouched base and the logits are far off. Refused; and the plain LoRA
    PEFT writes with path_initial_model_for_weight_conversion converts and matches."""
    peft: Any = pytest.importorskip("peft")
    transformers: Any = pytest.importorskip("transformers")
    from hf_gpt2 import hf_logits, llama_logits

    hf_dir, base_gguf, _, tokenizer = hf_base
    base = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
        lora_dropout=0.0,
        init_lora_weights="pissa",
    )
    model = peft.get_peft_model(base, config).eval()
    model.peft_config["default"].init_lora_weights = True  # keep the initial adapter apart
    model.save_pretrained(tmp_path / "initial")
    model.peft_config["default"].init_lora_weights = "pissa"
    _train_a_little(model, seed=5)
    model.save_pretrained(tmp_path / "pissa")

    with pytest.raises(LoraConversionError, match=r"init_lora_weights='pissa' \(PiSSA\)"):
        convert_lora(tmp_path / "pissa", tmp_path / "pissa.gguf")

    ids = tokenizer.encode(PROMPTS[0])
    expected = hf_logits(model, ids)
    # What converting it anyway would give: the adapter on the original weights.
    monkeypatch.setattr("models.convert.lora._check_init", lambda config, where: None)
    convert_lora(tmp_path / "pissa", tmp_path / "pissa.gguf")
    wrong = np.abs(llama_logits(_llama_with(base_gguf, tmp_path / "pissa.gguf"), ids) - expected)
    monkeypatch.undo()
    print(f"PiSSA converted as plain LoRA: max |logit difference| {wrong.max():.2f}")
    assert wrong.max() > 1.0

    model.save_pretrained(
        tmp_path / "converted", path_initial_model_for_weight_conversion=str(tmp_path / "initial")
    )
    convert_lora(tmp_path / "converted", tmp_path / "lora.gguf")
    got = llama_logits(_llama_with(base_gguf, tmp_path / "lora.gguf"), ids)
    assert np.abs(got - expected).max() < LOGIT_TOLERANCE


@pytest.mark.heavy
def test_alpha_pattern_matches_transformers_with_peft(
    tmp_path: Path, hf_base: tuple[Path, Path, Any, Any]
) -> None:
    peft: Any = pytest.importorskip("peft")
    transformers: Any = pytest.importorskip("transformers")
    from hf_gpt2 import hf_logits, llama_logits

    hf_dir, base_gguf, _, tokenizer = hf_base
    base = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
        lora_dropout=0.0,
        init_lora_weights=False,
        alpha_pattern={"h.0.attn.c_attn": 32, "mlp.c_proj": 2},
        rank_pattern={"h.1.mlp.c_fc": 8},
    )
    model = peft.get_peft_model(base, config).eval()
    model.save_pretrained(tmp_path / "adapter")
    convert_lora(tmp_path / "adapter", tmp_path / "lora.gguf")
    llama = _llama_with(base_gguf, tmp_path / "lora.gguf")
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        expected = hf_logits(model, ids)
        assert np.abs(llama_logits(llama, ids) - expected).max() < LOGIT_TOLERANCE
