"""The models Domovoy knows, and how to tell which quantization fits this machine.

File names are never hard-coded here: which files a repository holds (and how big they are)
is asked from the hub at run time, see `models.files.hub`. What is kept here is what a listing
cannot say: the chat template, the trained context and the KV-cache width used for the RAM
estimate.

RAM estimate (bytes) = model file size
                     + kv_bytes_per_token * min(N_CTX, context_length)   (f16 K and V cache)
                     + RUNTIME_OVERHEAD                                   (compute buffers, Python)
with N_CTX unset: the trained context capped by RAM, as `models.files.context` chooses it.

Hub repositories, templates, trained contexts and layer shapes come from the models' cards and
configs as public sources quote them; `family` names the tiny stand-in of the same architecture,
tokenizer kind and template that the tests run for real (tests/test_families.py).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

RUNTIME_OVERHEAD = 500 * 1000**2
DEFAULT_QUANT = "Q4_K_M"

# Quantization names as llama.cpp's quantize tool spells them, also the short forms some
# repositories use (`q4_K` for Q4_K_M). Matched against a file's path, case-insensitively.
_QUANT_RE = re.compile(
    r"(?:^|[-._/])"
    r"(IQ\d_(?:XXS|XS|S|M|NL)|Q\d_K(?:_[SML])?|Q\d_[01]|TQ\d_0|BF16|F16|F32)"
    r"(?=$|[-._/])",
    re.IGNORECASE,
)
_SHARD_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    repo: str
    kind: Literal["gguf", "lora"]
    template: str
    context_length: int
    # Bytes of f16 K+V cache per token: 2 * n_layer * n_embd_kv * 2. Zero for LoRA entries.
    kv_bytes_per_token: int
    notes: str
    base: str | None = None  # LoRA: the registry name of the GGUF it applies to
    default: bool = False
    family: str = ""  # the stand-in the tests run for this family, "" when none


REGISTRY: tuple[ModelEntry, ...] = (
    ModelEntry(
        name="rugpt35-13b",
        repo="oblivious/ruGPT-3.5-13B-GGUF",
        kind="gguf",
        template="rugpt35",
        context_length=2048,
        kv_bytes_per_token=2 * 40 * 5120 * 2,  # GPT-2: 40 layers, 5120 wide
        notes="ai-forever ruGPT-3.5-13B base model (GPT-2 architecture); add a LoRA for chat.",
        default=True,
        family="gpt2-bpe",
    ),
    ModelEntry(
        name="rugpt35-13b-lora",
        repo="evilfreelancer/ruGPT-3.5-13B-lora",
        kind="lora",
        template="rugpt35",
        context_length=2048,
        kv_bytes_per_token=0,
        notes="PEFT LoRA (r=16, alpha 16, c_attn), converted to a GGUF adapter on download.",
        base="rugpt35-13b",
        family="gpt2-bpe",
    ),
    ModelEntry(
        name="gigasaiga-lora",
        repo="IlyaGusev/gigasaiga_lora",
        kind="lora",
        template="gigasaiga",
        context_length=2048,
        kv_bytes_per_token=0,
        notes="GigaSaiga PEFT LoRA (r=8, alpha 16, c_attn), converted to a GGUF adapter.",
        base="rugpt35-13b",
        family="gpt2-bpe",
    ),
    ModelEntry(
        name="gigachat-20b-a3b",
        repo="ai-sage/GigaChat-20B-A3B-instruct-GGUF",
        kind="gguf",
        template="gigachat",
        context_length=131072,
        # DeepSeek MoE v1 (llama.cpp's `deepseek`, not DeepSeek-2/MLA): 28 layers,
        # grouped-query attention with 8 KV heads x 128.
        kv_bytes_per_token=2 * 28 * 2 * 8 * 128,
        notes="DeepSeek-style mixture of experts, 3B active parameters: fast on a CPU.",
        family="gigachat-moe",
    ),
    ModelEntry(
        name="saiga-mistral-7b",
        repo="IlyaGusev/saiga_mistral_7b_gguf",
        kind="gguf",
        template="saiga_v2",  # rulm's saiga_mistral_7b config trains with saiga_v2
        context_length=8192,
        kv_bytes_per_token=2 * 32 * 1024 * 2,  # Mistral 7B: 32 layers, 8 KV heads x 128
        notes="Saiga on Mistral 7B.",
        family="mistral-spm",
    ),
    ModelEntry(
        name="saiga-llama3-8b",
        repo="IlyaGusev/saiga_llama3_8b_gguf",
        kind="gguf",
        template="saiga_llama3",
        context_length=8192,
        kv_bytes_per_token=2 * 32 * 1024 * 2,  # Llama 3 8B: 32 layers, 8 KV heads x 128
        notes="Saiga on Llama 3 8B.",
        family="llama3-bpe",
    ),
    ModelEntry(
        name="vikhr-7b-0.4",
        repo="Vikhrmodels/Vikhr-7B-instruct_0.4-GGUF",
        kind="gguf",
        # Not verified offline which format 0.4 was tuned on; the template embedded in the
        # GGUF is authoritative, so use it.
        template="gguf",
        context_length=8192,
        kv_bytes_per_token=2 * 32 * 1024 * 2,  # Mistral 7B shape
        notes="Vikhr 0.4 on Mistral 7B with a Russian-extended tokenizer.",
        family="mistral-spm",
    ),
    ModelEntry(
        name="yandexgpt-5-lite-8b",
        repo="yandex/YandexGPT-5-Lite-8B-instruct-GGUF",
        kind="gguf",
        template="yandex",
        context_length=32768,
        kv_bytes_per_token=2 * 32 * 1024 * 2,  # llama architecture: 32 layers, 8 KV heads x 128
        notes="Yandex's official GGUF; its own prompt format (llama.cpp's `yandex`).",
        family="yandex-spm",
    ),
    ModelEntry(
        name="saiga-nemo-12b",
        repo="IlyaGusev/saiga_nemo_12b_gguf",
        kind="gguf",
        # The official GGUF carries the chat template Saiga Nemo was tuned with.
        template="gguf",
        context_length=131072,
        kv_bytes_per_token=2 * 40 * 1024 * 2,  # Mistral Nemo: 40 layers, 8 KV heads x 128
        notes="Saiga on Mistral Nemo 12B, official GGUF; long context, mind the RAM.",
        family="nemo-tekken",
    ),
    ModelEntry(
        name="vikhr-nemo-12b",
        repo="Vikhrmodels/Vikhr-Nemo-12B-Instruct-R-21-09-24-GGUF",
        kind="gguf",
        template="gguf",
        context_length=131072,
        kv_bytes_per_token=2 * 40 * 1024 * 2,  # Mistral Nemo shape
        notes="Vikhr on Mistral Nemo 12B; template from the GGUF.",
        family="nemo-tekken",
    ),
    ModelEntry(
        name="t-lite-it-2.1",
        repo="t-tech/T-lite-it-2.1-GGUF",
        kind="gguf",
        template="qwen3",
        context_length=40960,  # Qwen3's max_position_embeddings
        kv_bytes_per_token=2 * 36 * 1024 * 2,  # Qwen3 8B: 36 layers, 8 KV heads x 128
        notes="T-Bank's T-lite on Qwen3 8B; ChatML, reasoning in <think> switched off.",
        family="qwen3",
    ),
    ModelEntry(
        name="t-pro-it-2.0",
        repo="t-tech/T-pro-it-2.0-GGUF",
        kind="gguf",
        template="qwen3",
        context_length=40960,  # Qwen3's max_position_embeddings
        kv_bytes_per_token=2 * 64 * 1024 * 2,  # Qwen3 32B: 64 layers, 8 KV heads x 128
        notes="T-Bank's T-pro on Qwen3 32B; ChatML, reasoning in <think> switched off. Big.",
        family="qwen3",
    ),
    ModelEntry(
        name="gigachat3-10b-a1.8b",
        repo="ai-sage/GigaChat3-10B-A1.8B-GGUF",
        kind="gguf",
        template="gguf",
        context_length=262144,
        kv_bytes_per_token=2 * 26 * (512 + 64),  # DeepSeek-V3-style MLA: 26 layers, latent 512
        notes="GigaChat 3 Lightning: MoE with 1.8B active parameters (llama.cpp's deepseek2).",
        family="gigachat3-mla",
    ),
)


def find_entry(name: str) -> ModelEntry | None:
    """A registry entry by its short name or its repository id (case-insensitive)."""
    wanted = name.strip().lower()
    for entry in REGISTRY:
        if wanted in (entry.name.lower(), entry.repo.lower()):
            return entry
    return None


def _key(text: str) -> str:
    """A name reduced for comparison: no quantization, no `gguf`, only letters and digits."""
    text = _QUANT_RE.sub("", text.lower().removesuffix(".gguf"))
    return re.sub(r"[^0-9a-zа-яё]+", "", text).removesuffix("gguf")


def entry_for_file(path: Path, general_name: str | None = None) -> ModelEntry | None:
    """The GGUF registry entry a local file is a download of, or None when unsure.

    `models download` keeps a repository's files in a folder named after it; a file fetched
    elsewhere is matched by its name (without the quantization) or its `general.name` against
    an entry's short name or repository name.
    """
    entries = [entry for entry in REGISTRY if entry.kind == "gguf"]
    folders = {parent.name.lower() for parent in path.parents}
    for entry in entries:
        if entry.repo.replace("/", "--").lower() in folders:
            return entry
    names = {_key(split_stem(path.name))} | ({_key(general_name)} if general_name else set())
    names.discard("")
    for entry in entries:
        if names & {_key(entry.name), _key(entry.repo.split("/")[1])}:
            return entry
    return None


def ad_hoc_entry(repo: str) -> ModelEntry:
    """Any other `owner/name` GGUF repository: template from the file, width unknown."""
    return ModelEntry(
        name=repo,
        repo=repo,
        kind="gguf",
        template="gguf",
        context_length=2048,
        kv_bytes_per_token=0,
        notes="Not in Domovoy's registry; the RAM estimate leaves out the KV cache.",
    )


def quant_of(path: str) -> str | None:
    """The quantization a GGUF file name declares, upper-cased, or None."""
    if not path.lower().endswith(".gguf"):
        return None
    matches = _QUANT_RE.findall(path)
    return matches[-1].upper() if matches else None


def split_stem(path: str) -> str:
    """A split GGUF's name without its `-00001-of-00003` part (llama.cpp opens part 1)."""
    return _SHARD_RE.sub(".gguf", path)


def ram_estimate(entry: ModelEntry, file_size: int, n_ctx: int | None) -> int:
    """RAM for `entry` at N_CTX `n_ctx`; None is the default context this machine would get."""
    if n_ctx is None:
        from models.files.context import auto_n_ctx

        n_ctx = auto_n_ctx(entry.context_length, file_size, entry.kv_bytes_per_token, total_ram())
    kv_cache = entry.kv_bytes_per_token * min(n_ctx, entry.context_length)
    return file_size + kv_cache + RUNTIME_OVERHEAD


def total_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def human_size(size: float) -> str:
    """Decimal units, as the hub shows them (8.39 GB)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    return f"{size:.2f} TB"
