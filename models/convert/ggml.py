"""Turn a pre-GGUF GPT-2 file (GGML or GGJT v3, as llm-rs wrote them) into a GGUF.

The published ruGPT-3.5 GGML files were written by llm-rs: magic, six i32 hyperparameters
(n_vocab, n_ctx, n_embd, n_head, n_layer, ftype; a quantized file stores 2000 + the llama
file type), n_vocab again, the vocabulary as length-prefixed text (GGJT adds an f32 score),
then tensors, each as i32 n_dims, name length, ggml type, the dims (innermost first), the
name and the data (GGJT pads it to 32 bytes). The weights are already in llama.cpp's
orientation and the quantized blocks have today's layouts, so they are copied bit for bit.

The stored vocabulary cannot be used: it holds decoded text, so every token that is a piece of
a UTF-8 character became U+FFFD, and there are no merges. The vocabulary and merges come from
the model's tokenizer.json instead.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from models.convert.gguf_output import gguf_output
from models.convert.gpt2_vocab import (
    BOS,
    EOS,
    Vocabulary,
    byte_decoder,
    pad_vocabulary,
    read_tokenizer,
)
from models.errors import ModelError
from models.prompt.templates import RUGPT35_SYSTEM

logger = logging.getLogger(__name__)

TOKENIZER_REPO = "ai-forever/ruGPT-3.5-13B"
GGML_MAGIC = b"lmgg"  # 0x67676d6c written little-endian
GGJT_MAGIC = b"tjgg"
GGJT_VERSION = 3
MAX_PADDING = 256  # embedding rows past the tokenizer's last token taken as padding
QUANT_VERSION = 2  # ftype // 1000 in quantized files; version 1 had other block layouts

_FILE_TYPES = {
    0: gguf.LlamaFileType.ALL_F32,
    1: gguf.LlamaFileType.MOSTLY_F16,
    2: gguf.LlamaFileType.MOSTLY_Q4_0,
    3: gguf.LlamaFileType.MOSTLY_Q4_1,
    7: gguf.LlamaFileType.MOSTLY_Q8_0,
    8: gguf.LlamaFileType.MOSTLY_Q5_0,
    9: gguf.LlamaFileType.MOSTLY_Q5_1,
}
_T = gguf.GGMLQuantizationType
_TENSOR_TYPES = {t.value: t for t in (_T.F32, _T.F16, _T.Q4_0, _T.Q4_1, _T.Q5_0, _T.Q5_1, _T.Q8_0)}

_GLOBAL_NAMES = {
    "model/wte": "token_embd.weight",
    "model/wpe": "position_embd.weight",
    "model/ln_f/g": "output_norm.weight",
    "model/ln_f/b": "output_norm.bias",
    "model/lm_head": "output.weight",
}
_LAYER_NAMES = {
    "ln_1/g": "attn_norm.weight",
    "ln_1/b": "attn_norm.bias",
    "attn/c_attn/w": "attn_qkv.weight",
    "attn/c_attn/b": "attn_qkv.bias",
    "attn/c_proj/w": "attn_output.weight",
    "attn/c_proj/b": "attn_output.bias",
    "ln_2/g": "ffn_norm.weight",
    "ln_2/b": "ffn_norm.bias",
    "mlp/c_fc/w": "ffn_up.weight",
    "mlp/c_fc/b": "ffn_up.bias",
    "mlp/c_proj/w": "ffn_down.weight",
    "mlp/c_proj/b": "ffn_down.bias",
}
_LAYER_TENSOR = re.compile(r"^model/h(\d+)/(.+)$")

# The `rugpt35` template of models/templates.py as Jinja, for llama.cpp's own chat handling
# and TEMPLATE=gguf; without a system message it uses ruGPT-3.5's default one.
RUGPT35_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = '" + RUGPT35_SYSTEM + "' -%}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{{- '<s>system\\n' + system | trim + '</s>\\n' -}}"
    "{%- for message in turns -%}"
    "{%- set role = 'bot' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<s>' + role + '\\n' + message['content'] | trim + '</s>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<s>bot' -}}{%- endif -%}"
)


class GgmlConversionError(ModelError):
    """The file cannot be turned into a GGUF."""


@dataclass(frozen=True)
class GgmlTensor:
    name: str
    ggml_type: gguf.GGMLQuantizationType
    dims: tuple[int, ...]  # innermost first, as ggml counts them
    offset: int
    nbytes: int


@dataclass(frozen=True)
class GgmlModel:
    container: str
    n_vocab: int
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int
    file_type: gguf.LlamaFileType
    vocab: list[bytes]
    tensors: dict[str, GgmlTensor]


class _Cursor:
    def __init__(self, data: np.ndarray, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise GgmlConversionError(
                f"{self.path} ends early or is not a GPT-2 GGML file (bad length at byte "
                f"{self.pos})."
            )
        chunk = self.data[self.pos : self.pos + n].tobytes()
        self.pos += n
        return chunk

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise GgmlConversionError(
                f"{self.path} ends early: the data of a tensor is cut off (truncated download?)."
            )
        self.pos += n

    def i32(self) -> int:
        return int.from_bytes(self.take(4), "little", signed=True)


def _read_header(cursor: _Cursor) -> str:
    path = cursor.path
    magic = cursor.take(4)
    if magic == GGML_MAGIC:
        return "ggml"
    if magic == GGJT_MAGIC:
        version = cursor.i32()
        if version != GGJT_VERSION:
            raise GgmlConversionError(
                f"{path} is a GGJT version {version} file; only version 3 (the one llm-rs "
                "wrote) can be converted."
            )
        return "ggjt"
    if magic == b"GGUF":
        raise GgmlConversionError(f"{path} is already a GGUF file; no conversion is needed.")
    if magic in (b"fmgg", b"ggml", b"ggjt", b"ggmf"):
        raise GgmlConversionError(
            f"{path} is in a GGML container variant ({magic.decode()}) this converter does not "
            "read; only llm-rs's GGML and GGJT v3 files are supported."
        )
    raise GgmlConversionError(f"{path} is not a GGML or GGJT model file.")


def read_ggml(path: Path) -> GgmlModel:
    """Parse the header, vocabulary and tensor directory; tensor data stays on disk."""
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise GgmlConversionError(f"Could not read {path} ({exc}).") from exc
    cursor = _Cursor(data, path)
    container = _read_header(cursor)
    n_vocab, n_ctx, n_embd, n_head, n_layer, ftype = (cursor.i32() for _ in range(6))
    n_vocab_again = cursor.i32()
    quant_version, file_type = divmod(ftype, 1000)
    not_gpt2 = f"{path} is not a GPT-2 model in llm-rs's layout"
    if (
        min(n_vocab, n_ctx, n_embd, n_head, n_layer) <= 0
        or n_vocab_again != n_vocab
        or file_type not in _FILE_TYPES
        or n_embd % n_head
    ):
        raise GgmlConversionError(f"{not_gpt2} (its hyperparameters do not fit GPT-2's).")
    if quant_version not in (0, QUANT_VERSION) or (quant_version == 0 and file_type > 1):
        raise GgmlConversionError(
            f"{path} uses quantization version {quant_version}, whose block layouts differ "
            f"from today's; only version {QUANT_VERSION} files can be converted."
        )
    vocab = []
    for _ in range(n_vocab):
        vocab.append(cursor.take(cursor.i32()))
        if container == "ggjt":
            cursor.skip(4)  # score, unused by GPT-2
    tensors: dict[str, GgmlTensor] = {}
    while cursor.pos < len(data):
        n_dims, name_len, type_id = cursor.i32(), cursor.i32(), cursor.i32()
        if not 1 <= n_dims <= 2 or not 0 < name_len < 256:
            raise GgmlConversionError(f"{not_gpt2} (bad tensor record at byte {cursor.pos}).")
        dims = tuple(cursor.i32() for _ in range(n_dims))
        name = cursor.take(name_len).decode("utf-8", errors="replace")
        if name not in _GLOBAL_NAMES and not (
            (m := _LAYER_TENSOR.match(name)) and m.group(2) in _LAYER_NAMES
        ):
            raise GgmlConversionError(f"{not_gpt2} (it has a tensor named {name!r}).")
        if type_id not in _TENSOR_TYPES:
            raise GgmlConversionError(f"{path}: tensor {name} has unsupported type {type_id}.")
        ggml_type = _TENSOR_TYPES[type_id]
        block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        if min(dims) <= 0 or dims[0] % block:
            raise GgmlConversionError(f"{path}: tensor {name} has impossible dims {dims}.")
        if container == "ggjt":
            cursor.skip(-cursor.pos % 32)
        nbytes = int(np.prod(dims)) // block * type_size
        offset = cursor.pos
        cursor.skip(nbytes)
        if name in tensors:
            raise GgmlConversionError(f"{path} holds the tensor {name} twice.")
        tensors[name] = GgmlTensor(name, ggml_type, dims, offset, nbytes)
    return GgmlModel(
        container, n_vocab, n_ctx, n_embd, n_head, n_layer, _FILE_TYPES[file_type], vocab, tensors
    )


def _gguf_name(name: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    match = _LAYER_TENSOR.match(name)
    assert match is not None  # read_ggml accepted only known names
    return f"blk.{int(match.group(1))}.{_LAYER_NAMES[match.group(2)]}"


def _check_complete(model: GgmlModel, path: Path) -> None:
    expected = set(_GLOBAL_NAMES) | {
        f"model/h{i}/{part}" for i in range(model.n_layer) for part in _LAYER_NAMES
    }
    expected.discard("model/lm_head")  # optional: llama.cpp falls back to wte
    missing = sorted(expected - set(model.tensors))
    extra = sorted(set(model.tensors) - expected - {"model/lm_head"})
    if missing or extra:
        raise GgmlConversionError(
            f"{path} does not match its {model.n_layer} layers "
            f"(missing {missing[:3]}, unexpected {extra[:3]})."
        )
    wte = model.tensors["model/wte"].dims
    if wte != (model.n_embd, model.n_vocab):
        raise GgmlConversionError(f"{path}: model/wte has dims {wte}, not n_embd x n_vocab.")


def _check_same_vocabulary(model: GgmlModel, vocab: Vocabulary, source: Path, tok: Path) -> None:
    """Compare the tokens the file kept intact with the tokenizer's: another model's tokenizer
    of the same size would make the model speak gibberish."""
    decoder = byte_decoder()
    compared = agreed = 0
    for token_id, token in enumerate(vocab.tokens):
        stored = model.vocab[token_id]
        if "\ufffd".encode() in stored:
            continue  # a piece of a character: the file only kept a replacement mark
        if token in vocab.added or any(ch not in decoder for ch in token):
            expected = token.encode()
        else:
            expected = bytes(decoder[ch] for ch in token)
        try:
            expected.decode("utf-8")
        except UnicodeDecodeError:
            continue
        compared += 1
        agreed += stored == expected
    if compared >= 20 and agreed < 0.9 * compared:
        raise GgmlConversionError(
            f"{tok} does not match the vocabulary stored in {source} ({agreed} of {compared} "
            "tokens agree); it is the tokenizer of another model."
        )


def _fetch_tokenizer() -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(TOKENIZER_REPO, "tokenizer.json"))
    except Exception as exc:  # every hub or network failure ends in the same advice
        raise GgmlConversionError(
            f"Could not fetch tokenizer.json from {TOKENIZER_REPO} ({type(exc).__name__}); "
            "download it yourself and pass it with --tokenizer."
        ) from exc


def _tensor_array(data: np.ndarray, tensor: GgmlTensor) -> np.ndarray:
    raw = data[tensor.offset : tensor.offset + tensor.nbytes]
    rows = tensor.dims[::-1]  # numpy order: outermost first
    if tensor.ggml_type == _T.F32:
        return raw.view(np.float32).reshape(rows)
    if tensor.ggml_type == _T.F16:
        return raw.view(np.float16).reshape(rows)
    return raw.reshape(*rows[:-1], -1)


def convert_ggml(source: Path, output: Path, tokenizer_json: Path | None) -> None:
    """Write the GGML/GGJT GPT-2 file `source` as a GGUF at `output`."""
    source, output = Path(source), Path(output)
    if not source.is_file():
        raise GgmlConversionError(f"The model file {source} does not exist.")
    model = read_ggml(source)
    _check_complete(model, source)
    tokenizer_path = Path(tokenizer_json) if tokenizer_json else _fetch_tokenizer()
    vocab = read_tokenizer(tokenizer_path, GgmlConversionError)
    # Rows past the tokenizer are padding (to a multiple of 8 to 128); more is another model.
    if not 0 <= model.n_vocab - len(vocab.tokens) < MAX_PADDING:
        raise GgmlConversionError(
            f"{tokenizer_path} has {len(vocab.tokens)} tokens but {source} has {model.n_vocab}; "
            "it is the tokenizer of another model."
        )
    _check_same_vocabulary(model, vocab, source, tokenizer_path)
    vocab = pad_vocabulary(vocab, model.n_vocab)
    n_ff = model.tensors["model/h0/mlp/c_fc/w"].dims[1]
    data = np.memmap(source, dtype=np.uint8, mode="r")

    with gguf_output(output, "gpt2", GgmlConversionError) as writer:
        writer.add_name(source.stem)
        writer.add_context_length(model.n_ctx)
        writer.add_embedding_length(model.n_embd)
        writer.add_feed_forward_length(n_ff)
        writer.add_block_count(model.n_layer)
        writer.add_head_count(model.n_head)
        writer.add_layer_norm_eps(1e-5)  # GPT-2's; GGML files do not store it
        writer.add_file_type(model.file_type)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.types)
        writer.add_token_merges(vocab.merges)
        writer.add_bos_token_id(vocab.ids[BOS])
        writer.add_eos_token_id(vocab.ids[EOS])
        for name, setter in (
            ("<pad>", writer.add_pad_token_id),
            ("<unk>", writer.add_unk_token_id),
        ):
            if name in vocab.ids:
                setter(vocab.ids[name])
        writer.add_add_bos_token(False)
        writer.add_chat_template(RUGPT35_CHAT_TEMPLATE)
        for tensor in model.tensors.values():
            array = _tensor_array(data, tensor)
            quantized = tensor.ggml_type not in (_T.F32, _T.F16)
            writer.add_tensor(
                _gguf_name(tensor.name),
                array,
                raw_dtype=tensor.ggml_type if quantized else None,
            )
    logger.info(
        "Converted %s (%s, %s, %d layers) to %s",
        source,
        model.container,
        model.file_type.name,
        model.n_layer,
        output,
    )
