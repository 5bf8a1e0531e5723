"""Old GGML/GGJT GPT-2 files -> GGUF.

Light tests write small files in llm-rs's layout by hand (from the tiny test model) for the
refusals and a llama.cpp round trip. The `heavy` ones take real files written by llm-rs 0.2.15
from a transformers GPT-2 and check them against transformers.
"""

from __future__ import annotations

import http.server
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from tiny_model import SPECIAL_TOKENS, build_tiny_gguf, token_bytes, train_tokenizer
from typer.testing import CliRunner

from bot.cli import app
from models.convert.ggml import RUGPT35_CHAT_TEMPLATE, GgmlConversionError, convert_ggml
from models.prompt.templates import ChatMessage, GgufTemplate, RuGpt35Template

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# GGUF name -> llm-rs name, written out independently of the converter's own table.
LAYER_PARTS = {
    "attn_norm.weight": "ln_1/g",
    "attn_norm.bias": "ln_1/b",
    "attn_qkv.weight": "attn/c_attn/w",
    "attn_qkv.bias": "attn/c_attn/b",
    "attn_output.weight": "attn/c_proj/w",
    "attn_output.bias": "attn/c_proj/b",
    "ffn_norm.weight": "ln_2/g",
    "ffn_norm.bias": "ln_2/b",
    "ffn_up.weight": "mlp/c_fc/w",
    "ffn_up.bias": "mlp/c_fc/b",
    "ffn_down.weight": "mlp/c_proj/w",
    "ffn_down.bias": "mlp/c_proj/b",
}
GLOBALS = {
    "token_embd.weight": "model/wte",
    "position_embd.weight": "model/wpe",
    "output_norm.weight": "model/ln_f/g",
    "output_norm.bias": "model/ln_f/b",
    "output.weight": "model/lm_head",
}


def ggml_name(gguf_name: str) -> str:
    if gguf_name in GLOBALS:
        return GLOBALS[gguf_name]
    _, layer, part = gguf_name.split(".", 2)
    return f"model/h{layer}/{LAYER_PARTS[part]}"


def write_ggml(
    path: Path,
    tensors: dict[str, np.ndarray],
    hparams: tuple[int, ...],
    vocab: list[bytes],
    *,
    magic: bytes = b"tjgg",
    version: int | None = 3,
) -> Path:
    """A file in llm-rs's layout: f32/f16 tensors only (quantized ones come from llm-rs)."""
    with path.open("wb") as out:
        out.write(magic)
        if version is not None:
            out.write(struct.pack("<i", version))
        out.write(struct.pack(f"<{len(hparams)}i", *hparams))
        out.write(struct.pack("<i", len(vocab)))
        for token in vocab:
            out.write(struct.pack("<i", len(token)) + token)
            if magic == b"tjgg":
                out.write(struct.pack("<f", 0.0))
        for name, array in tensors.items():
            encoded = name.encode()
            type_id = 1 if array.dtype == np.float16 else 0
            out.write(struct.pack("<iii", array.ndim, len(encoded), type_id))
            out.write(struct.pack(f"<{array.ndim}i", *array.shape[::-1]) + encoded)
            if magic == b"tjgg":
                out.write(b"\0" * (-out.tell() % 32))
            out.write(np.ascontiguousarray(array).tobytes())
    return path


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny test GGUF, its tensors renamed into an llm-rs GGJT file, and its tokenizer."""
    folder = tmp_path_factory.mktemp("ggml")
    model = build_tiny_gguf(folder / "tiny.gguf", chat_template=None)
    reader = gguf.GGUFReader(model)
    tensors = {ggml_name(t.name): np.array(t.data) for t in reader.tensors}
    tokenizer = train_tokenizer(1200)
    (folder / "tokenizer.json").write_text(tokenizer.to_str())
    n_vocab = tensors["model/wte"].shape[0]
    hparams = (n_vocab, 2048, 64, 4, 2, 1)
    # What llm-rs stores: each token decoded as text, pieces of characters lost to U+FFFD.
    pieces = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    vocab = [
        (tok if tok in SPECIAL_TOKENS else token_bytes(tok).decode(errors="replace")).encode()
        for tok, _ in pieces
    ]
    return {
        "gguf": model,
        "tensors": tensors,
        "hparams": hparams,
        "vocab": vocab,
        "tokenizer": folder / "tokenizer.json",
        "ggjt": write_ggml(folder / "tiny-ggjt.bin", tensors, hparams, vocab),
        "ggml": write_ggml(
            folder / "tiny-ggml.bin", tensors, hparams, vocab, magic=b"lmgg", version=None
        ),
    }


def greedy(model: Path, prompt: str, steps: int = 12) -> tuple[list[int], np.ndarray]:
    llama = Llama(model_path=str(model), n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    ids = llama.tokenize(prompt.encode(), add_bos=False, special=True)
    llama.eval(ids)
    scores = np.array(llama.scores[: len(ids)])
    llama.reset()  # type: ignore[no-untyped-call]
    out = []
    for token in llama.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == steps:
            break
    return out, scores


@pytest.mark.parametrize("container", ["ggjt", "ggml"])
def test_round_trip_runs_like_the_original(
    tmp_path: Path, tiny_source: dict[str, Any], container: str
) -> None:
    out = tmp_path / "converted.gguf"
    convert_ggml(tiny_source[container], out, tiny_source["tokenizer"])
    original = {t.name: np.array(t.data) for t in gguf.GGUFReader(tiny_source["gguf"]).tensors}
    converted = {t.name: np.array(t.data) for t in gguf.GGUFReader(out).tensors}
    assert set(converted) == set(original)
    for name, value in original.items():
        np.testing.assert_array_equal(converted[name], value, err_msg=name)
    prompt = "<s>user\nПривет! Как дела?</s>\n<s>bot"
    tokens, scores = greedy(out, prompt)
    tokens_ref, scores_ref = greedy(tiny_source["gguf"], prompt)
    assert tokens == tokens_ref
    np.testing.assert_array_equal(scores, scores_ref)


def test_embedding_padded_past_the_tokenizer_gets_unused_tokens(
    tmp_path: Path, tiny_source: dict[str, Any]
) -> None:
    tensors, hparams, vocab = tiny_source["tensors"], tiny_source["hparams"], tiny_source["vocab"]
    rng = np.random.default_rng(4)
    n_embd, extra = tensors["model/wte"].shape[1], 48
    padded = dict(tensors)
    for name in ("model/wte", "model/lm_head"):
        rows = rng.normal(0, 0.5, (extra, n_embd)).astype(tensors[name].dtype)
        padded[name] = np.concatenate([tensors[name], rows])
    source = write_ggml(
        tmp_path / "padded.bin",
        padded,
        (hparams[0] + extra, *hparams[1:]),
        [*vocab, *[b""] * extra],
    )
    out = tmp_path / "padded.gguf"
    convert_ggml(source, out, tiny_source["tokenizer"])
    reader = gguf.GGUFReader(out)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == hparams[0] + extra
    assert tokens[hparams[0] :] == [f"[PAD{i}]" for i in range(hparams[0], hparams[0] + extra)]
    assert set(types[hparams[0] :]) == {gguf.TokenType.UNUSED}
    assert gguf.TokenType.UNUSED not in types[: hparams[0]]
    # The real tokens run as in the unpadded model; the padding rows only add columns.
    prompt = "<s>user\nПривет! Как дела?</s>\n<s>bot"
    _, scores = greedy(out, prompt, steps=1)
    _, scores_ref = greedy(tiny_source["gguf"], prompt, steps=1)
    np.testing.assert_array_equal(scores[:, : hparams[0]], scores_ref)
    # Far more rows than tokens is not padding but another model's tokenizer.
    many = (hparams[0] + 600, *hparams[1:])
    grown = dict(padded)
    for name in ("model/wte", "model/lm_head"):
        grown[name] = np.concatenate([tensors[name], np.zeros((600, n_embd), tensors[name].dtype)])
    other = write_ggml(tmp_path / "other.bin", grown, many, [*vocab, *[b""] * 600])
    with pytest.raises(GgmlConversionError, match=f"has {hparams[0]} tokens but .* has {many[0]}"):
        convert_ggml(other, tmp_path / "other.gguf", tiny_source["tokenizer"])


def test_tokenizer_chat_template_and_control_tokens(
    tmp_path: Path, tiny_source: dict[str, Any]
) -> None:
    out = tmp_path / "converted.gguf"
    convert_ggml(tiny_source["ggjt"], out, tiny_source["tokenizer"])
    reader = gguf.GGUFReader(out)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tokens = fields["tokenizer.ggml.tokens"]
    types = fields["tokenizer.ggml.token_type"]
    assert fields["general.architecture"] == "gpt2"
    assert fields["gpt2.context_length"] == 2048
    assert fields["gpt2.feed_forward_length"] == 256
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert fields["tokenizer.chat_template"] == RUGPT35_CHAT_TEMPLATE
    assert tokens[fields["tokenizer.ggml.bos_token_id"]] == "<s>"
    assert tokens[fields["tokenizer.ggml.eos_token_id"]] == "</s>"
    assert types[tokens.index("<s>")] == gguf.TokenType.CONTROL
    assert types[tokens.index("</s>")] == gguf.TokenType.CONTROL
    control = {t for t, kind in zip(tokens, types, strict=True) if kind == gguf.TokenType.CONTROL}
    assert control == set(SPECIAL_TOKENS)
    spec = json.loads(tiny_source["tokenizer"].read_text())
    assert len(fields["tokenizer.ggml.merges"]) == len(spec["model"]["merges"])

    # The embedded Jinja template renders exactly what the built-in rugpt35 template does.
    embedded = GgufTemplate(fields["tokenizer.chat_template"], bos="<s>", eos="</s>")
    builtin = RuGpt35Template()
    conversation = [
        ChatMessage("user", "  Привет!  "),
        ChatMessage("bot", "Здравствуйте."),
        ChatMessage("user", "Как дела?"),
    ]
    with_system = [ChatMessage("system", "Ты — Домовой."), *conversation]
    assert embedded.render(with_system) == builtin.render(with_system)
    default = [ChatMessage("system", builtin.default_system_prompt or ""), *conversation]
    assert embedded.render(conversation) == builtin.render(default)
    assert embedded.render(conversation, add_generation_prompt=False) == builtin.render(
        default, add_generation_prompt=False
    )
    assert builtin.render(with_system).endswith("</s>\n<s>bot")

    # llama-cpp-python's own chat handling renders the embedded template the same way.
    formatter = Jinja2ChatFormatter(
        template=RUGPT35_CHAT_TEMPLATE, eos_token="</s>", bos_token="<s>"
    )
    roles = {"system": "system", "user": "user", "bot": "assistant"}
    messages = [{"role": roles[m.role], "content": m.content} for m in with_system]
    assert formatter(messages=messages).prompt == builtin.render(with_system)  # type: ignore[arg-type]


def test_refusals(tmp_path: Path, tiny_source: dict[str, Any]) -> None:
    tensors, hparams, vocab = tiny_source["tensors"], tiny_source["hparams"], tiny_source["vocab"]
    tokenizer = tiny_source["tokenizer"]

    def refused(path: Path, match: str, tok: Path = tokenizer) -> None:
        with pytest.raises(GgmlConversionError, match=match):
            convert_ggml(path, tmp_path / "out.gguf", tok)
        assert not (tmp_path / "out.gguf").exists()

    refused(write_ggml(tmp_path / "v2.bin", tensors, hparams, vocab, version=2), "GGJT version 2")
    refused(
        write_ggml(tmp_path / "ggmf.bin", tensors, hparams, vocab, magic=b"fmgg", version=1),
        "container variant",
    )
    (tmp_path / "text.bin").write_bytes(b"hello world, not a model at all")
    refused(tmp_path / "text.bin", "not a GGML or GGJT")
    refused(tiny_source["gguf"], "already a GGUF")
    refused(tmp_path / "missing.bin", "does not exist")
    old_quant = (*hparams[:5], 1002)  # q4_0 of quantization version 1
    refused(write_ggml(tmp_path / "q1.bin", tensors, old_quant, vocab), "quantization version 1")
    # A LLaMA-style file: n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype.
    llama_hp = (hparams[0], 64, 256, 4, 2, 16, 1)
    refused(write_ggml(tmp_path / "llama.bin", tensors, llama_hp, vocab), "not a GPT-2 model")
    renamed = {("model/tok_embeddings" if k == "model/wte" else k): v for k, v in tensors.items()}
    refused(write_ggml(tmp_path / "names.bin", renamed, hparams, vocab), "tensor named")
    partial = {k: v for k, v in tensors.items() if not k.startswith("model/h1/mlp")}
    refused(write_ggml(tmp_path / "partial.bin", partial, hparams, vocab), "missing")
    full = write_ggml(tmp_path / "full.bin", tensors, hparams, vocab)
    (tmp_path / "cut.bin").write_bytes(full.read_bytes()[:-1000])
    refused(tmp_path / "cut.bin", "ends early")

    # Same size, other model: the tokens the file kept intact disagree.
    shuffled = json.loads(tokenizer.read_text())
    items = list(shuffled["model"]["vocab"].items())
    order = np.random.default_rng(0).permutation(len(items))
    shuffled["model"]["vocab"] = {items[j][0]: items[i][1] for i, j in enumerate(order)}
    shuffled["added_tokens"] = []
    (tmp_path / "other.json").write_text(json.dumps(shuffled))
    refused(full, "does not match the vocabulary stored", tmp_path / "other.json")
    small = tmp_path / "small-tokenizer.json"
    small.write_text(train_tokenizer(600).to_str())
    refused(full, "has 600 tokens but", small)
    spec = json.loads(tokenizer.read_text())
    spec["model"]["type"] = "WordPiece"
    (tmp_path / "wp.json").write_text(json.dumps(spec))
    refused(full, "not BPE", tmp_path / "wp.json")
    (tmp_path / "broken.json").write_text("{")
    refused(full, "not a readable BPE tokenizer.json", tmp_path / "broken.json")


class _Hub(http.server.BaseHTTPRequestHandler):
    """Plays the hub's resolve endpoint for one tokenizer.json."""

    body: bytes | None = b""
    requests: list[str] = []  # noqa: RUF012

    def _head(self) -> bool:
        self.requests.append(self.path)
        if self.body is None or not self.path.endswith("/resolve/main/tokenizer.json"):
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            return False
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("ETag", '"tokenizer-etag"')
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.end_headers()
        return True

    def do_HEAD(self) -> None:
        self._head()

    def do_GET(self) -> None:
        if self._head() and self.body is not None:
            self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hub(tiny_source: dict[str, Any]) -> Iterator[str]:
    _Hub.body = tiny_source["tokenizer"].read_bytes()
    _Hub.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_cli(args: list[str], endpoint: str, home: Path) -> subprocess.CompletedProcess[str]:
    # huggingface_hub reads HF_ENDPOINT when imported, so the command runs in its own process.
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    code = "from bot.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_fetches_the_tokenizer_from_the_hub(
    tmp_path: Path, tiny_source: dict[str, Any], hub: str
) -> None:
    out = tmp_path / "model.gguf"
    result = run_cli(
        ["models", "convert-ggml", str(tiny_source["ggjt"]), "-o", str(out)], hub, tmp_path / "hf"
    )
    assert result.returncode == 0, result.stderr
    assert f"MODEL_PATH={out.resolve()}" in result.stdout
    assert any(p.endswith("/tokenizer.json") for p in _Hub.requests)
    tokens = gguf.GGUFReader(out).fields["tokenizer.ggml.tokens"].contents()
    vocab = json.loads(tiny_source["tokenizer"].read_text())["model"]["vocab"]
    assert tokens == [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]


def test_cli_says_what_to_do_when_the_hub_fails(
    tmp_path: Path, tiny_source: dict[str, Any], hub: str
) -> None:
    # (With no network at all huggingface_hub retries for ~25 s, then fails the same way.)
    _Hub.body = None
    result = run_cli(
        ["models", "convert-ggml", str(tiny_source["ggjt"]), "-o", str(tmp_path / "m.gguf")],
        hub,
        tmp_path / "hf",
    )
    assert result.returncode == 1
    assert "Could not fetch tokenizer.json from ai-forever/ruGPT-3.5-13B" in result.stderr
    assert "--tokenizer" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m.gguf").exists()


def test_cli_refusal_is_one_sentence(tmp_path: Path, tiny_source: dict[str, Any]) -> None:
    (tmp_path / "junk.bin").write_bytes(b"\0" * 64)
    result = CliRunner().invoke(
        app,
        [
            "models",
            "convert-ggml",
            str(tmp_path / "junk.bin"),
            "-o",
            str(tmp_path / "o.gguf"),
            "--tokenizer",
            str(tiny_source["tokenizer"]),
        ],
    )
    assert result.exit_code == 1
    assert "is not a GGML or GGJT model file" in result.output


# ---- proofs with real llm-rs files against transformers (heavy) ----

# Worst rounding error of each type as a fraction of the block's largest |weight|: q8_0 has
# steps of amax/127, so errors up to amax/254; q4_0 maps -amax to -8 steps of amax/8, so +amax
# lands at 7/8, an error of amax/8. The f16 scale adds up to 127 steps x 2^-11 (q8_0).
F16_SCALE_SLACK = 1 / 1000
QUANT_BOUND = {
    gguf.GGMLQuantizationType.F16: 0.0,
    gguf.GGMLQuantizationType.F32: 0.0,
    gguf.GGMLQuantizationType.Q8_0: 1 / 254,
    gguf.GGMLQuantizationType.Q5_1: 2 / 62,  # half a step of (max - min) / 31
    gguf.GGMLQuantizationType.Q5_0: 1 / 16,
    gguf.GGMLQuantizationType.Q4_1: 2 / 30,
    gguf.GGMLQuantizationType.Q4_0: 1 / 8,
}
HF_NAMES = {
    "ln_1/g": "ln_1.weight",
    "ln_1/b": "ln_1.bias",
    "attn/c_attn/w": "attn.c_attn.weight",
    "attn/c_attn/b": "attn.c_attn.bias",
    "attn/c_proj/w": "attn.c_proj.weight",
    "attn/c_proj/b": "attn.c_proj.bias",
    "ln_2/g": "ln_2.weight",
    "ln_2/b": "ln_2.bias",
    "mlp/c_fc/w": "mlp.c_fc.weight",
    "mlp/c_fc/b": "mlp.c_fc.bias",
    "mlp/c_proj/w": "mlp.c_proj.weight",
    "mlp/c_proj/b": "mlp.c_proj.bias",
}


def hf_weight(state: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The transformers weight behind an llm-rs tensor name, in ggml's (n_out, n_in) layout."""
    top = {
        "model/wte": "transformer.wte.weight",
        "model/wpe": "transformer.wpe.weight",
        "model/ln_f/g": "transformer.ln_f.weight",
        "model/ln_f/b": "transformer.ln_f.bias",
        "model/lm_head": "lm_head.weight",
    }
    if name in top:
        return state[top[name]]
    _, layer, part = name.split("/", 2)
    value = state[f"transformer.h.{layer[1:]}.{HF_NAMES[part]}"]
    return value.T if name.endswith("/w") else value  # Conv1D keeps (n_in, n_out)


def walk_source(path: Path) -> dict[str, tuple[gguf.GGMLQuantizationType, bytes]]:
    """The source file's tensors, found by a reader written for this test alone."""
    data = path.read_bytes()
    pos = 8 if data[:4] == b"tjgg" else 4
    n_vocab = struct.unpack_from("<i", data, pos)[0]
    pos += 7 * 4
    for _ in range(n_vocab):
        pos += 4 + struct.unpack_from("<i", data, pos)[0] + (4 if data[:4] == b"tjgg" else 0)
    found = {}
    while pos < len(data):
        n_dims, name_len, type_id = struct.unpack_from("<3i", data, pos)
        dims = struct.unpack_from(f"<{n_dims}i", data, pos + 12)
        pos += 12 + 4 * n_dims
        name = data[pos : pos + name_len].decode()
        pos += name_len
        if data[:4] == b"tjgg":
            pos += -pos % 32
        qtype = gguf.GGMLQuantizationType(type_id)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(dims)) // block * size
        found[name] = (qtype, data[pos : pos + nbytes])
        pos += nbytes
    return found


@pytest.fixture(scope="module")
def llmrs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("llm_rs")
    from hf_gpt2 import build_hf_gpt2

    folder = tmp_path_factory.mktemp("llmrs")
    model, tokenizer = build_hf_gpt2(folder / "hf")
    result = subprocess.run(
        [
            sys.executable,
            str(TESTS / "support" / "llmrs_files.py"),
            str(folder / "hf"),
            str(folder / "ggml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    files = {k: Path(v) for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}
    converted = {}
    for key, path in files.items():
        if key.startswith("BLOOM"):
            continue
        converted[key] = folder / f"{key}.gguf"
        convert_ggml(path, converted[key], folder / "hf" / "tokenizer.json")
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    return {
        "files": files,
        "converted": converted,
        "model": model,
        "tokenizer": tokenizer,
        "state": state,
    }


LLMRS_FILES = ["F16-GGML"] + [
    f"{q}-{c}" for q in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0") for c in ("GGML", "GGJT")
]


@pytest.mark.heavy
@pytest.mark.parametrize("key", LLMRS_FILES)
def test_tensors_are_the_source_and_match_transformers(llmrs: dict[str, Any], key: str) -> None:
    source = walk_source(llmrs["files"][key])
    reader = gguf.GGUFReader(llmrs["converted"][key])
    assert {ggml_name(t.name) for t in reader.tensors} == set(source)
    quantized = 0
    for tensor in reader.tensors:
        name = ggml_name(tensor.name)
        qtype, raw = source[name]
        assert tensor.tensor_type == qtype, name
        written = np.array(tensor.data)
        assert written.tobytes() == raw, f"{name}: blocks differ from the source"
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            dtype = np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16
            source_values = np.frombuffer(raw, dtype=dtype).reshape(written.shape)
            values = written
        else:
            quantized += 1
            source_blocks = np.frombuffer(raw, dtype=np.uint8).reshape(written.shape)
            source_values = gguf.quants.dequantize(source_blocks, qtype)
            values = gguf.quants.dequantize(written, qtype)
        np.testing.assert_array_equal(values, source_values, err_msg=name)

        expected = hf_weight(llmrs["state"], name)
        assert values.shape == expected.shape, name
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        amax = np.abs(expected.reshape(-1, block) if block > 1 else expected.reshape(-1, 1))
        bound = (1.05 * QUANT_BOUND[qtype] + F16_SCALE_SLACK) * amax.max(axis=1, keepdims=True)
        error = np.abs(values.astype(np.float32) - expected).reshape(amax.shape)
        assert (error <= bound).all(), f"{name}: worst error {error.max()} over the bound"
    if key.startswith("Q"):
        assert quantized >= 5  # the weight matrices were really quantized


PROMPTS = [
    "Привет! Как дела?",
    "The quick brown fox jumps",
    "<s>user\nРасскажи мне сказку про кота</s>\n<s>bot",
    "Москва — столица России.",
]
# f16 weights (exact: the model's weights are f16 values) and f16 arithmetic in llama.cpp.
F16_TOLERANCE = 0.05


@pytest.mark.heavy
def test_f16_file_runs_like_transformers(llmrs: dict[str, Any]) -> None:
    from hf_gpt2 import greedy_agreement, hf_logits, llama_logits

    llama = Llama(
        model_path=str(llmrs["converted"]["F16-GGML"]),
        n_ctx=128,
        n_threads=2,
        logits_all=True,
        verbose=False,
    )
    worst, checked = 0.0, 0
    for prompt in PROMPTS:
        ids = llmrs["tokenizer"].encode(prompt)
        assert ids == llama.tokenize(prompt.encode(), add_bos=False, special=True)
        difference = np.abs(llama_logits(llama, ids) - hf_logits(llmrs["model"], ids))
        worst = max(worst, float(difference.max()))
        checked += greedy_agreement(llmrs["model"], llama, ids, steps=10, margin=0.1)
    print(f"f16 GGML -> GGUF: max |logit difference| {worst:.4f}; greedy checked {checked}")
    assert worst < F16_TOLERANCE
    assert checked >= 20


@pytest.mark.heavy
def test_quantized_files_run_in_llama_cpp(llmrs: dict[str, Any]) -> None:
    from hf_gpt2 import hf_logits, llama_logits

    ids = llmrs["tokenizer"].encode(PROMPTS[0])
    expected = hf_logits(llmrs["model"], ids)
    for key in LLMRS_FILES[1:]:
        llama = Llama(
            model_path=str(llmrs["converted"][key]),
            n_ctx=128,
            n_threads=2,
            logits_all=True,
            verbose=False,
        )
        got = llama_logits(llama, ids)
        correlation = np.corrcoef(got.ravel(), expected.ravel())[0, 1]
        worst = np.abs(got - expected).max()
        print(f"{key}: max |logit difference| {worst:.3f}, r={correlation:.4f}")
        assert correlation > 0.95, key


@pytest.mark.heavy
def test_other_architecture_from_llmrs_is_refused(llmrs: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(GgmlConversionError, match="not a GPT-2 model"):
        convert_ggml(llmrs["files"]["BLOOM-F16"], tmp_path / "x.gguf", None)


@pytest.mark.heavy
def test_padded_embedding_runs_like_transformers(tmp_path: Path) -> None:
    """A GPT-2 whose embedding is padded to a multiple of 64 rows, as checkpoints often are."""
    pytest.importorskip("torch")
    from hf_gpt2 import build_hf_gpt2, greedy_agreement, hf_logits, llama_logits, write_hf_gpt2_gguf

    n_tokens = train_tokenizer(1200).get_vocab_size()
    rows = -(-n_tokens // 64) * 64
    assert rows > n_tokens
    model, tokenizer = build_hf_gpt2(tmp_path / "hf", seed=3, vocab_rows=rows)
    plain = write_hf_gpt2_gguf(model, tokenizer, tmp_path / "plain.gguf")
    tensors = {ggml_name(t.name): np.array(t.data) for t in gguf.GGUFReader(plain).tensors}
    assert tensors["model/wte"].shape[0] == rows
    # What llm-rs stores: each token decoded as text.
    stored = [
        (tok if tok in SPECIAL_TOKENS else token_bytes(tok).decode(errors="replace")).encode()
        for tok in tokenizer.convert_ids_to_tokens(list(range(n_tokens)))
    ]
    source = write_ggml(
        tmp_path / "padded.bin",
        tensors,
        (rows, 256, 64, 4, 2, 0),
        [*stored, *[b""] * (rows - n_tokens)],
    )
    convert_ggml(source, tmp_path / "padded.gguf", tmp_path / "hf" / "tokenizer.json")
    llama = Llama(
        model_path=str(tmp_path / "padded.gguf"),
        n_ctx=128,
        n_threads=2,
        logits_all=True,
        verbose=False,
    )
    assert llama.n_vocab() == rows
    worst, checked = 0.0, 0
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        assert ids == llama.tokenize(prompt.encode(), add_bos=False, special=True)
        difference = np.abs(llama_logits(llama, ids) - hf_logits(model, ids))
        worst = max(worst, float(difference.max()))
        checked += greedy_agreement(model, llama, ids, steps=10, margin=0.1)
    print(f"padded embedding: max |logit difference| {worst:.4f}; greedy checked {checked}")
    assert worst < F16_TOLERANCE
    assert checked >= 20
