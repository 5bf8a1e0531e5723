"""Open GGUF files with llama.cpp, turning its failures into messages that name the file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFReader
from llama_cpp import Llama

from models.errors import ModelLoadError
from models.files.gguf_info import check_gguf

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    model_path: Path
    n_ctx: int = 2048
    n_threads: int | None = None
    n_batch: int = 512
    n_gpu_layers: int = 0
    use_mlock: bool = False
    lora_path: Path | None = None
    lora_scale: float = 1.0
    seed: int | None = None


def _read_header(path: Path, what: str) -> GGUFReader:
    try:
        return GGUFReader(path)
    except (ValueError, OSError, IndexError) as exc:
        raise ModelLoadError(
            f"The {what} file {path} is not a readable GGUF file ({exc})."
        ) from exc


def _header_string(reader: GGUFReader, key: str) -> str | None:
    field = reader.get_field(key)
    value = field.contents() if field is not None else None
    return value if isinstance(value, str) else None


def check_lora(model_path: Path, lora_path: Path) -> None:
    """Refuse an adapter that does not fit the model, before llama.cpp sees it.

    llama.cpp applies an adapter of another architecture when the tensor names happen to
    match, and llama-cpp-python carries on without the adapter when the shapes do not: both
    would silently give the base model's answers.
    """
    check_gguf(lora_path, what="LoRA adapter")
    lora = _read_header(lora_path, "LoRA adapter")
    if _header_string(lora, "general.type") != "adapter":
        raise ModelLoadError(f"The file {lora_path} is not a LoRA adapter GGUF.")
    model = _read_header(model_path, "model")
    model_arch = _header_string(model, "general.architecture")
    lora_arch = _header_string(lora, "general.architecture")
    if model_arch != lora_arch:
        raise ModelLoadError(
            f"The LoRA adapter {lora_path} was made for the {lora_arch} architecture, "
            f"but {model_path.name} is {model_arch}."
        )
    # Shapes in ggml order: weight (n_in, n_out), lora_a (n_in, r), lora_b (r, n_out).
    base = {t.name: tuple(int(n) for n in t.shape) for t in model.tensors}
    adapter = {t.name: tuple(int(n) for n in t.shape) for t in lora.tensors}
    for name, a_shape in adapter.items():
        if not name.endswith(".lora_a"):
            continue
        target = name.removesuffix(".lora_a")
        b_shape = adapter.get(target + ".lora_b")
        w_shape = base.get(target)
        fits = (
            b_shape is not None
            and w_shape is not None
            and a_shape[0] == w_shape[0]
            and b_shape[1] == w_shape[1]
            and a_shape[1] == b_shape[0]
        )
        if not fits:
            raise ModelLoadError(
                f"The LoRA adapter {lora_path} does not fit {model_path.name} "
                f"(tensor {target}); it was made for another model."
            )


def load_llama(config: ModelConfig) -> Llama:
    check_gguf(config.model_path)
    if config.lora_path is not None:
        check_lora(config.model_path, config.lora_path)
    kwargs: dict[str, object] = {}
    if config.seed is not None:
        kwargs["seed"] = config.seed
    try:
        llama = Llama(
            model_path=str(config.model_path),
            n_ctx=config.n_ctx,
            n_batch=min(config.n_batch, config.n_ctx),
            n_threads=config.n_threads,
            n_gpu_layers=config.n_gpu_layers,
            use_mmap=True,
            use_mlock=config.use_mlock,
            lora_path=str(config.lora_path) if config.lora_path else None,
            lora_scale=config.lora_scale,
            verbose=False,
            **kwargs,  # type: ignore[arg-type]
        )
    except (ValueError, RuntimeError, OSError) as exc:
        if config.lora_path is not None and "lora" in str(exc).lower():
            raise ModelLoadError(
                f"The LoRA adapter {config.lora_path} could not be applied to "
                f"{config.model_path.name}; it was probably made for another model."
            ) from exc
        raise ModelLoadError(
            f"llama.cpp could not load the model file {config.model_path}; "
            "it is damaged or of an architecture this llama.cpp build does not support."
        ) from exc
    logger.info(
        "Loaded %s (n_ctx=%d, threads=%s, gpu_layers=%d, lora=%s)",
        config.model_path.name,
        config.n_ctx,
        config.n_threads or "auto",
        config.n_gpu_layers,
        config.lora_path.name if config.lora_path else "none",
    )
    return llama
