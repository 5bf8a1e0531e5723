"""Turn a PEFT LoRA adapter for a GPT-2-architecture model into a llama.cpp LoRA GGUF.

PEFT stores `lora_A` as (r, n_in) and `lora_B` as (n_out, r) for GPT-2's Conv1D layers too:
its forward is x·(Wᵀ + s·B·A)ᵀ + b whatever `fan_in_fan_out` says. llama.cpp multiplies
`lora_b · (lora_a · x)` on weights of shape (n_out, n_in), so both go over as they are; a
transpose (what llama.cpp's own converter does for Conv1D) would corrupt them, silently so for
the square `c_proj`.

llama.cpp scales every pair by `adapter.lora.alpha / rank`; PEFT uses alpha/r, or
alpha/sqrt(r) with rsLoRA, with per-module ranks and alphas from `rank_pattern` and
`alpha_pattern`. The written alpha makes the two agree, and where one alpha cannot (rsLoRA with
per-layer ranks, per-module alphas) the difference is folded into `lora_b`.

Adapters initialized with PiSSA, OLoRA, CorDA, LoftQ or LoRA-GA are refused: PEFT moves part of
each base weight into the adapter at initialization, so they belong to a modified base model.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from models.convert.gguf_output import gguf_output
from models.convert.torch_checkpoint import bf16_to_f32, load_torch_state_dict
from models.errors import ModelError

logger = logging.getLogger(__name__)

# (block part, PEFT module) -> llama.cpp tensor; GPT-2 calls both projections `c_proj`.
_TARGETS = {
    ("attn", "c_attn"): "attn_qkv",
    ("attn", "c_proj"): "attn_output",
    ("mlp", "c_fc"): "ffn_up",
    ("mlp", "c_proj"): "ffn_down",
}
_MODULE_NAMES = {tensor: f"{part}.{module}" for (part, module), tensor in _TARGETS.items()}
_GPT2_MODULES = {"c_attn", "c_proj", "c_fc"}
_GPT2_OTHER_LAYERS = {"wte", "wpe", "lm_head", "ln_1", "ln_2", "ln_f"}
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:transformer\.)?h\.(\d+)\.(attn|mlp)\.(c_attn|c_proj|c_fc)"
    r"\.lora_([AB])(?:\.[A-Za-z0-9_-]+)?\.weight$"
)


class LoraConversionError(ModelError):
    """The adapter cannot be turned into a llama.cpp LoRA GGUF."""


def _read_config(adapter_dir: Path) -> dict[str, Any]:
    if not adapter_dir.is_dir():
        raise LoraConversionError(f"The adapter folder {adapter_dir} does not exist.")
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise LoraConversionError(
            f"{adapter_dir} has no adapter_config.json, so it is not a PEFT adapter folder."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoraConversionError(f"{path} is not valid JSON ({exc}).") from exc
    if not isinstance(config, dict):
        raise LoraConversionError(f"{path} does not hold a JSON object.")
    return config


def _check_config(config: dict[str, Any], where: Path) -> None:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise LoraConversionError(
            f"{where} is a {peft_type} adapter; only LoRA adapters can be converted."
        )
    if config.get("use_dora"):
        raise LoraConversionError(
            f"{where} is a DoRA adapter (use_dora), which llama.cpp cannot apply."
        )
    if str(config.get("bias", "none")) != "none" or config.get("lora_bias"):
        raise LoraConversionError(
            f"{where} also trains biases (bias={config.get('bias')!r}), which a llama.cpp "
            "LoRA adapter cannot carry."
        )
    if config.get("modules_to_save"):
        raise LoraConversionError(
            f"{where} saves whole modules ({', '.join(config['modules_to_save'])}) besides "
            "the LoRA matrices, which a llama.cpp LoRA adapter cannot carry."
        )
    if config.get("enable_lora"):
        raise LoraConversionError(
            f"{where} was made by an early PEFT version (enable_lora on a merged layer), "
            "whose layout this converter does not read."
        )
    _check_init(config, where)
    for key in ("target_parameters", "trainable_token_indices"):
        if config.get(key):
            raise LoraConversionError(f"{where} uses {key}, which this converter does not support.")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        names = {str(t).rsplit(".", 1)[-1] for t in targets}
        foreign = sorted(names - _GPT2_MODULES - _GPT2_OTHER_LAYERS)
        if foreign:
            raise LoraConversionError(
                f"{where} targets {', '.join(foreign)}, which GPT-2 does not have: the adapter "
                "was made for another architecture."
            )
        other = sorted(names & _GPT2_OTHER_LAYERS)
        if other:
            raise LoraConversionError(
                f"{where} targets {', '.join(other)}; only c_attn, c_proj and c_fc are supported."
            )
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or rank <= 0:
        raise LoraConversionError(f"{where} has no valid rank r.")
    if not isinstance(alpha, int | float) or alpha <= 0:
        raise LoraConversionError(f"{where} has no positive lora_alpha.")


# Initializations after which PEFT trains the adapter against a changed base model (the
# principal part, or a quantized residual, is moved out of the base weight into the adapter).
_BASE_CHANGING_INITS = {
    "pissa": "PiSSA",
    "olora": "OLoRA",
    "corda": "CorDA",
    "loftq": "LoftQ",
    "lora_ga": "LoRA-GA",
}


def _check_init(config: dict[str, Any], where: Path) -> None:
    init = config.get("init_lora_weights", True)
    if not isinstance(init, str):
        return
    kind = init.lower()
    kind = "pissa" if kind.startswith("pissa") else kind  # pissa_niter_16
    if kind in _BASE_CHANGING_INITS:
        raise LoraConversionError(
            f"{where} was made with init_lora_weights={init!r} ({_BASE_CHANGING_INITS[kind]}), "
            "which trains the adapter against a modified copy of the base model, so on the "
            "original model it would give wrong answers; re-save it with PEFT's "
            "path_initial_model_for_weight_conversion to get a plain LoRA."
        )


def _pattern_value(pattern: dict[str, Any], module: str, default: float) -> float:
    """PEFT's rank_pattern/alpha_pattern lookup: the first key that is a suffix of the module's
    name (a regex, matched at a dot boundary), else the default."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return float(value)
    return default


_SAFETENSORS_FLOATS = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


def _load_safetensors_bf16(path: Path) -> dict[str, np.ndarray]:
    """safetensors' numpy API cannot return bfloat16 (numpy has no such type), yet adapters
    trained in bf16 are common: read the documented layout (u64 header length, JSON header,
    raw little-endian data) and widen each value to float32, which holds every bf16 exactly."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    header_len = int.from_bytes(data[:8].tobytes(), "little")
    header = json.loads(data[8 : 8 + header_len].tobytes())
    base = 8 + header_len
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = (base + int(offset) for offset in spec["data_offsets"])
        if not base <= start <= end <= len(data):
            raise ValueError(f"tensor {name} lies outside the file")
        raw, dtype = data[start:end], spec["dtype"]
        if dtype == "BF16":
            values = bf16_to_f32(raw.view("<u2"))
        elif dtype in _SAFETENSORS_FLOATS:
            values = raw.view(_SAFETENSORS_FLOATS[dtype]).astype(np.float32)
        else:
            raise ValueError(f"tensor {name} has type {dtype}, not a float type")
        tensors[name] = values.reshape([int(n) for n in spec["shape"]])
    return tensors


def _load_tensors(adapter_dir: Path) -> dict[str, np.ndarray]:
    safetensors_path = adapter_dir / "adapter_model.safetensors"
    bin_path = adapter_dir / "adapter_model.bin"
    if safetensors_path.is_file():
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(safetensors_path)))
        except TypeError as exc:
            if "bfloat16" not in str(exc):
                raise LoraConversionError(
                    f"{safetensors_path} could not be read as safetensors ({exc})."
                ) from exc
        except (SafetensorError, OSError, ValueError) as exc:
            raise LoraConversionError(
                f"{safetensors_path} could not be read as safetensors ({exc})."
            ) from exc
        try:
            return _load_safetensors_bf16(safetensors_path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LoraConversionError(
                f"{safetensors_path} could not be read as safetensors ({exc})."
            ) from exc
    if bin_path.is_file():
        return load_torch_state_dict(bin_path)
    raise LoraConversionError(
        f"{adapter_dir} has neither adapter_model.safetensors nor adapter_model.bin."
    )


def _pairs(
    tensors: dict[str, np.ndarray], where: Path
) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    halves: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match is None:
            if "lora_magnitude_vector" in key:
                raise LoraConversionError(
                    f"{where} is a DoRA adapter ({key}), which llama.cpp cannot apply."
                )
            raise LoraConversionError(
                f"{where} holds {key}, which is not a LoRA matrix of a GPT-2 c_attn, c_proj "
                "or c_fc layer."
            )
        layer, part, module, half = match.groups()
        target = (int(layer), _TARGETS[(part, module)])
        if half in halves.setdefault(target, {}):
            raise LoraConversionError(f"{where} holds lora_{half} of {key} twice.")
        halves[target][half] = value
    pairs: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    for target, found in sorted(halves.items()):
        if set(found) != {"A", "B"}:
            raise LoraConversionError(
                f"{where} has only one of lora_A/lora_B for layer {target[0]} {target[1]}."
            )
        a, b = found["A"], found["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoraConversionError(
                f"{where} has LoRA matrices of shapes {a.shape} and {b.shape} for layer "
                f"{target[0]} {target[1]}, which do not pair up."
            )
        if target[1] == "attn_qkv" and b.shape[0] != 3 * a.shape[1]:
            raise LoraConversionError(
                f"{where} has a c_attn LoRA of shape {b.shape[0]}x{a.shape[1]}, not GPT-2's "
                "fused 3·n_embd x n_embd: the adapter was made for another architecture."
            )
        pairs[target] = (a, b)
    if not pairs:
        raise LoraConversionError(f"{where} holds no LoRA matrices.")
    return pairs


def convert_lora(adapter_dir: Path, output: Path) -> None:
    """Write the PEFT LoRA adapter in `adapter_dir` as a llama.cpp LoRA GGUF at `output`."""
    adapter_dir = Path(adapter_dir)
    output = Path(output)
    config = _read_config(adapter_dir)
    _check_config(config, adapter_dir)
    pairs = _pairs(_load_tensors(adapter_dir), adapter_dir)

    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    rslora = bool(config.get("use_rslora"))
    alpha_pattern = config.get("alpha_pattern") or {}
    if not isinstance(alpha_pattern, dict):
        raise LoraConversionError(f"{adapter_dir} has an alpha_pattern that is not a mapping.")

    def peft_scale(layer: int, tensor: str, r: int) -> float:
        # PEFT matches the patterns against the module's name inside GPT2LMHeadModel.
        module = f"transformer.h.{layer}.{_MODULE_NAMES[tensor]}"
        pair_alpha = _pattern_value(alpha_pattern, module, alpha)
        return pair_alpha / math.sqrt(r) if rslora else pair_alpha / r

    # llama.cpp's scale is gguf_alpha / rank of each pair; where a pair's PEFT scale differs
    # (rank_pattern with rsLoRA, alpha_pattern), the difference is folded into its lora_b.
    gguf_alpha = (alpha / math.sqrt(rank) if rslora else alpha / rank) * rank

    with gguf_output(output, "gpt2", LoraConversionError) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, gguf_alpha)
        writer.add_name(adapter_dir.resolve().name)
        for (layer, tensor), (a, b) in pairs.items():
            pair_rank = a.shape[0]
            fold = peft_scale(layer, tensor, pair_rank) / (gguf_alpha / pair_rank)
            name = f"blk.{layer}.{tensor}.weight"
            writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
            b32 = np.asarray(b, dtype=np.float32)
            writer.add_tensor(
                f"{name}.lora_b",
                np.ascontiguousarray(b32 if math.isclose(fold, 1.0) else b32 * fold),
            )
    logger.info(
        "Converted %s: %d LoRA pairs, r=%d, alpha=%g%s",
        adapter_dir,
        len(pairs),
        rank,
        alpha,
        " (rsLoRA)" if rslora else "",
    )
