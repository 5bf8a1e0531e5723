"""`domovoy models list|download|info` against a local fake of the Hugging Face hub.

The real huggingface_hub client talks HTTP to tests/fake_hub.py: in-process through the
`endpoint` argument, end to end through the CLI in a subprocess with HF_ENDPOINT set (the
client reads it at import time, so that is the only honest way to test the variable).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pty
import shutil
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_hub import FakeHub
from tqdm import tqdm

from models.errors import HubError, HubUnreachable, ModelError, ModelLoadError
from models.files import hub as hub_module
from models.files.gguf_info import read_gguf_info
from models.files.hub import download, list_repo
from models.files.registry import REGISTRY, find_entry, human_size, quant_of, split_stem

ROOT = Path(__file__).resolve().parent.parent
RUGPT = "oblivious/ruGPT-3.5-13B-GGUF"
SAIGA = "IlyaGusev/saiga_mistral_7b_gguf"
GIGASAIGA = "IlyaGusev/gigasaiga_lora"
TWENTY_TB = 20 * 10**12
BIG = 24 * 1024 * 1024  # larger than huggingface_hub's 10 MiB download chunk


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    """The safetensors container, written by hand so the test needs no extra package."""
    header: dict[str, object] = {}
    blobs, offset = [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def _peft_adapter(n_embd: int = 64, n_layer: int = 2, rank: int = 4) -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    tensors = {}
    for i in range(n_layer):
        prefix = f"base_model.model.transformer.h.{i}.attn.c_attn"
        tensors[f"{prefix}.lora_A.weight"] = rng.normal(size=(rank, n_embd))
        tensors[f"{prefix}.lora_B.weight"] = rng.normal(size=(3 * n_embd, rank))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 8,
        "target_modules": ["c_attn"],
        "fan_in_fan_out": True,
        "bias": "none",
        "lora_dropout": 0.0,
        "base_model_name_or_path": "ai-forever/ruGPT-3.5-13B",
    }
    return {
        "adapter_config.json": json.dumps(config).encode(),
        "adapter_model.safetensors": _safetensors(tensors),
    }


@pytest.fixture(scope="module")
def payloads(tiny_gguf: Path) -> dict[str, bytes]:
    return {
        "tiny": tiny_gguf.read_bytes(),
        "big": np.random.default_rng(0).bytes(BIG),
    }


@pytest.fixture
def hub(payloads: dict[str, bytes]) -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.add_file(RUGPT, "README.md", b"# ruGPT-3.5-13B GGUF\n")
    fake.add_file(RUGPT, "ruGPT-3.5-13B-Q4_K_M.gguf", payloads["tiny"])
    fake.add_file(RUGPT, "ruGPT-3.5-13B-Q5_K_M.gguf", payloads["big"])
    fake.add_file(RUGPT, "ruGPT-3.5-13B-Q8_0.gguf", b"GGUF", declared_size=TWENTY_TB)
    fake.add_file(SAIGA, "model-q4_K.gguf", payloads["tiny"])
    fake.add_file(SAIGA, "q8/model-q8_0-00001-of-00002.gguf", b"part one")
    fake.add_file(SAIGA, "q8/model-q8_0-00002-of-00002.gguf", b"part two!")
    for name, content in _peft_adapter().items():
        fake.add_file(GIGASAIGA, name, content)
    with fake:
        yield fake


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _cli_env(endpoint: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(data_dir / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        DATA_DIR=str(data_dir),
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from bot.cli import main; main()", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_sentence_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# --- listing -------------------------------------------------------------------------------


def test_quant_names_are_read_from_file_names() -> None:
    assert quant_of("ruGPT-3.5-13B-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_of("model-q4_K.gguf") == "Q4_K"
    assert quant_of("Vikhr-7B-instruct_0.4-Q8_0.gguf") == "Q8_0"
    assert quant_of("x-f16.gguf") == "F16"
    assert quant_of("README.md") is None
    assert quant_of("Vikhr-7B-instruct_0.4.gguf") is None
    assert split_stem("a/m-q8_0-00002-of-00003.gguf") == "a/m-q8_0.gguf"


def test_list_repo_finds_quants_with_sizes(hub: FakeHub, payloads: dict[str, bytes]) -> None:
    entry = find_entry("rugpt35-13b")
    assert entry is not None
    listing = list_repo(entry, endpoint=hub.url)
    assert [q.quant for q in listing.quants] == ["Q4_K_M", "Q5_K_M", "Q8_0"]
    q4 = listing.quant("q4_k_m")
    assert q4 is not None and q4.size == len(payloads["tiny"])
    assert q4.paths == ("ruGPT-3.5-13B-Q4_K_M.gguf",)
    q8 = listing.quant("Q8_0")
    assert q8 is not None and q8.size == TWENTY_TB

    saiga = find_entry(SAIGA)
    assert saiga is not None
    split = list_repo(saiga, endpoint=hub.url).quant("Q8_0")
    assert split is not None
    assert split.paths == ("q8/model-q8_0-00001-of-00002.gguf", "q8/model-q8_0-00002-of-00002.gguf")
    assert split.size == len(b"part one") + len(b"part two!")


def test_cli_list_shows_sizes_and_marks_what_fits(
    hub: FakeHub, tmp_path: Path, payloads: dict[str, bytes]
) -> None:
    result = _cli(["models", "list"], _cli_env(hub.url, tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    q4 = next(line for line in lines if line.strip().startswith("Q4_K_M"))
    assert human_size(len(payloads["tiny"])) in q4
    assert q4.rstrip().endswith("fits")
    assert "at N_CTX 2048" in q4  # ruGPT-3.5's trained context, which this RAM holds
    q8 = next(line for line in lines if line.strip().startswith("Q8_0"))
    assert "20.00 TB" in q8 and "too big" in q8
    # Every registry entry is shown; those the fake hub lacks say why in one line.
    for name in ("rugpt35-13b", "gigasaiga-lora", "gigachat-20b-a3b", "vikhr-7b-0.4"):
        assert any(line.startswith(name) for line in lines), name
    assert "adapter files: adapter_config.json, adapter_model.safetensors" in result.stdout
    assert "The hub has no model repository named ai-sage/GigaChat-20B-A3B-instruct-GGUF" in (
        result.stdout
    )


def test_cli_list_without_network_still_prints_the_registry(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _cli(["models", "list"], _cli_env(_closed_port_url(), tmp_path))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert "Sizes unknown: Cannot reach the Hugging Face hub" in result.stdout
    assert "oblivious/ruGPT-3.5-13B-GGUF" in result.stdout
    assert "rugpt35-13b (default)" in result.stdout
    assert result.stdout.count("sizes unknown (hub unreachable)") == len(REGISTRY)
    assert result.stdout.count("family tested on a stand-in") == len(REGISTRY)


# --- download ------------------------------------------------------------------------------


def _cli_on_a_terminal(
    args: list[str], env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the CLI with a pseudo-terminal on stderr: tqdm draws its bar only for a terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    captured = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            captured.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.run(
        [sys.executable, "-c", "from bot.cli import main; main()", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
        timeout=120,
    )
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return proc, captured.decode(errors="replace")


def test_cli_download_end_to_end_with_progress_and_token(
    hub: FakeHub, tmp_path: Path, payloads: dict[str, bytes]
) -> None:
    env = _cli_env(hub.url, tmp_path, HF_TOKEN="hf_test_token")
    proc, stderr = _cli_on_a_terminal(
        ["models", "download", "rugpt35-13b", "--quant", "Q5_K_M"], env
    )
    assert proc.returncode == 0, stderr
    assert "100%" in stderr and "25.2M" in stderr  # tqdm's bar for 24 MiB

    target = tmp_path / "models" / "oblivious--ruGPT-3.5-13B-GGUF" / "ruGPT-3.5-13B-Q5_K_M.gguf"
    assert f"MODEL_PATH={target}" in proc.stdout.splitlines()
    assert "TEMPLATE=rugpt35" in proc.stdout.splitlines()
    assert target.read_bytes() == payloads["big"]
    # HF_TOKEN reached the hub on the listing and the download.
    gets = hub.resolve_requests("ruGPT-3.5-13B-Q5_K_M.gguf")
    assert gets and all(r.headers.get("authorization") == "Bearer hf_test_token" for r in gets)
    listings = [r for r in hub.requests if r.path.startswith("/api/models/")]
    assert listings and all(
        r.headers.get("authorization") == "Bearer hf_test_token" for r in listings
    )


def test_cli_download_then_info_on_the_downloaded_file(hub: FakeHub, tmp_path: Path) -> None:
    env = _cli_env(hub.url, tmp_path)
    result = _cli(["models", "download", "rugpt35-13b"], env)  # default Q4_K_M
    assert result.returncode == 0, result.stderr
    model_path = next(
        line.split("=", 1)[1]
        for line in result.stdout.splitlines()
        if line.startswith("MODEL_PATH=")
    )
    info = _cli(["models", "info", model_path], env)
    assert info.returncode == 0, info.stderr
    assert "architecture:    gpt2" in info.stdout


def test_download_resumes_after_an_interrupted_transfer(
    hub: FakeHub, tmp_path: Path, payloads: dict[str, bytes]
) -> None:
    name = "ruGPT-3.5-13B-Q5_K_M.gguf"
    cut = 15 * 1024 * 1024
    hub.cut_after[name] = cut
    result = download("rugpt35-13b", "Q5_K_M", models_dir=tmp_path / "models", endpoint=hub.url)
    assert result.model_path.read_bytes() == payloads["big"]

    gets = hub.resolve_requests(name)
    assert len(gets) == 2
    assert "range" not in gets[0].headers
    resumed = gets[1].headers["range"]
    assert resumed.startswith("bytes=") and resumed.endswith("-")
    offset = int(resumed[len("bytes=") : -1])
    assert 0 < offset <= cut  # picked up where the broken transfer stopped, not from zero


def test_second_download_fetches_nothing(hub: FakeHub, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    first = download("rugpt35-13b", models_dir=models_dir, endpoint=hub.url)
    gets_before = len(hub.resolve_requests("ruGPT-3.5-13B-Q4_K_M.gguf"))
    second = download("rugpt35-13b", models_dir=models_dir, endpoint=hub.url)
    assert second.model_path == first.model_path
    assert len(hub.resolve_requests("ruGPT-3.5-13B-Q4_K_M.gguf")) == gets_before
    # A complete file is trusted as it is: not even its metadata is asked for again.
    assert len(hub.resolve_requests("ruGPT-3.5-13B-Q4_K_M.gguf", method="HEAD")) == 1


def test_wrong_repository_is_one_sentence(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubError) as caught:
        download("nobody/no-such-model-GGUF", models_dir=tmp_path, endpoint=hub.url)
    assert str(caught.value).startswith("The hub has no model repository named nobody/no-such")

    error = _one_sentence_error(
        _cli(["models", "download", "nobody/no-such-model-GGUF"], _cli_env(hub.url, tmp_path))
    )
    assert "The hub has no model repository named nobody/no-such-model-GGUF" in error
    unknown = _one_sentence_error(
        _cli(["models", "download", "no-such-name"], _cli_env(hub.url, tmp_path))
    )
    assert "Unknown model 'no-such-name'" in unknown


def test_missing_quant_is_one_sentence(hub: FakeHub, tmp_path: Path) -> None:
    error = _one_sentence_error(
        _cli(
            ["models", "download", "rugpt35-13b", "--quant", "Q3_K_S"], _cli_env(hub.url, tmp_path)
        )
    )
    assert error == (
        "Error: oblivious/ruGPT-3.5-13B-GGUF has no Q3_K_S GGUF file "
        "(available: Q4_K_M, Q5_K_M, Q8_0)."
    )
    assert not hub.resolve_requests("ruGPT-3.5-13B-Q4_K_M.gguf", method="HEAD")


def test_file_gone_from_the_hub_is_one_sentence(hub: FakeHub, tmp_path: Path) -> None:
    # Listed, but the download answers 404 EntryNotFound (deleted in between).
    hub.hidden.add("ruGPT-3.5-13B-Q4_K_M.gguf")
    with pytest.raises(HubError) as caught:
        download("rugpt35-13b", models_dir=tmp_path, endpoint=hub.url)
    assert str(caught.value) == (
        "oblivious/ruGPT-3.5-13B-GGUF has no file ruGPT-3.5-13B-Q4_K_M.gguf on the hub."
    )


def test_no_network_is_one_sentence(tmp_path: Path) -> None:
    url = _closed_port_url()
    with pytest.raises(HubUnreachable) as caught:
        download("rugpt35-13b", models_dir=tmp_path, endpoint=url)
    assert str(caught.value).startswith(f"Cannot reach the Hugging Face hub at {url}")
    error = _one_sentence_error(
        _cli(["models", "download", "rugpt35-13b"], _cli_env(url, tmp_path))
    )
    assert "check the network connection or HF_ENDPOINT" in error


def test_bad_settings_are_one_sentence_not_a_traceback(tmp_path: Path) -> None:
    env = _cli_env("http://127.0.0.1:9", tmp_path, N_CTX="two thousand")
    for command in (["models", "list"], ["models", "download", "rugpt35-13b"]):
        error = _one_sentence_error(_cli(command, env))
        assert error.startswith("Error: invalid settings: N_CTX:"), error


def test_disk_too_small_is_refused_before_downloading(hub: FakeHub, tmp_path: Path) -> None:
    # The listing says 20 TB: no disk here has that, so the real free space refuses it.
    error = _one_sentence_error(
        _cli(["models", "download", "rugpt35-13b", "--quant", "Q8_0"], _cli_env(hub.url, tmp_path))
    )
    assert "Not enough disk space in" in error and "needs 20.00 TB" in error
    assert not hub.resolve_requests("ruGPT-3.5-13B-Q8_0.gguf")
    assert not hub.resolve_requests("ruGPT-3.5-13B-Q8_0.gguf", method="HEAD")


def test_a_folder_the_user_cannot_write_is_one_sentence(hub: FakeHub, tmp_path: Path) -> None:
    # Root may write anywhere, so a file in the way stands in for a service-owned DATA_DIR.
    (tmp_path / "taken").write_text("a file, not a folder")
    env = _cli_env(hub.url, tmp_path / "taken", HF_HOME=str(tmp_path / "hf-home"))
    error = _one_sentence_error(_cli(["models", "download", "rugpt35-13b"], env))
    assert error.startswith(f"Error: Cannot write {tmp_path / 'taken'}")
    assert "runuser -u domovoy" in error and "DATA_DIR" in error
    # huggingface_hub's own token file under another user's HOME: one sentence as well.
    env["HF_HOME"] = str(tmp_path / "taken" / "hf-home")
    error = _one_sentence_error(_cli(["models", "download", "rugpt35-13b"], env))
    assert error.startswith(f"Error: Cannot use {tmp_path / 'taken' / 'hf-home'}"), error
    assert "HF_HOME" in error
    # A stray folder where the partial download belongs is refused the same way.
    part = tmp_path / "models" / "oblivious--ruGPT-3.5-13B-GGUF" / "ruGPT-3.5-13B-Q4_K_M.gguf.part"
    part.mkdir(parents=True)
    with pytest.raises(HubError, match=f"^Cannot write {part} "):
        download("rugpt35-13b", models_dir=tmp_path / "models", endpoint=hub.url)
    part.rmdir()


def test_a_disk_filling_up_mid_download_is_one_sentence(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk cannot be made here: the transfer hits ENOSPC after its first bytes.
    import huggingface_hub.file_download as file_download

    def fill_up(url: str, temp_file: Any, **kwargs: Any) -> None:
        temp_file.write(b"some bytes")
        raise OSError(errno.ENOSPC, "No space left on device", temp_file.name)

    monkeypatch.setattr(file_download, "http_get", fill_up)
    with pytest.raises(HubError, match=r"disk filled up .* continues where it stopped"):
        download("rugpt35-13b", models_dir=tmp_path / "models", endpoint=hub.url)


def test_disk_refusal_with_a_nearly_full_disk(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payloads: dict[str, bytes]
) -> None:
    # A full disk cannot be made here: shrink what shutil reports to 1000 bytes free.
    real = shutil.disk_usage

    def nearly_full(path: str | os.PathLike[str]) -> object:
        total, used, _free = real(path)
        return type(real(path))(total, used, 1000)

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    with pytest.raises(HubError) as caught:
        download("rugpt35-13b", models_dir=tmp_path / "models", endpoint=hub.url)
    assert "Not enough disk space" in str(caught.value)
    needs = human_size(len(payloads["tiny"]))
    assert f"needs {needs} but only 1.00 kB is free" in str(caught.value)
    assert not hub.resolve_requests("ruGPT-3.5-13B-Q4_K_M.gguf")
    assert not (tmp_path / "models").exists()


def test_short_ram_gives_a_warning_not_a_refusal(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payloads: dict[str, bytes]
) -> None:
    monkeypatch.setattr(hub_module, "total_ram", lambda: 1_000_000_000)
    result = download("rugpt35-13b", models_dir=tmp_path, endpoint=hub.url)
    assert result.model_path.is_file()
    assert len(result.warnings) == 1
    # File + ruGPT-3.5-13B's KV cache (2 x 40 layers x 5120 x 2 bytes per token, 2048 tokens)
    # + 500 MB of runtime overhead.
    expected = human_size(len(payloads["tiny"]) + 2 * 40 * 5120 * 2 * 2048 + 500_000_000)
    assert f"needs about {expected} of RAM and this machine has 1.00 GB" in result.warnings[0]


def test_lora_download_fetches_adapter_converts_and_pairs_with_base(
    hub: FakeHub, tmp_path: Path, payloads: dict[str, bytes]
) -> None:
    import gguf

    result = download("gigasaiga-lora", models_dir=tmp_path, endpoint=hub.url)
    adapter_dir = tmp_path / "IlyaGusev--gigasaiga_lora"
    assert (adapter_dir / "adapter_config.json").is_file()
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert result.model_path.read_bytes() == payloads["tiny"]  # the base, Q4_K_M
    assert result.template == "gigasaiga"
    assert result.lora_path == tmp_path / "IlyaGusev--gigasaiga_lora.gguf"
    reader = gguf.GGUFReader(result.lora_path)
    assert reader.fields["general.type"].contents() == "adapter"
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_qkv.weight.lora_a" in names and "blk.1.attn_qkv.weight.lora_b" in names


def test_cli_lora_download_prints_the_model_and_lora_pair(hub: FakeHub, tmp_path: Path) -> None:
    result = _cli(["models", "download", "gigasaiga-lora"], _cli_env(hub.url, tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    models = tmp_path / "models"
    assert (
        f"MODEL_PATH={models / 'oblivious--ruGPT-3.5-13B-GGUF' / 'ruGPT-3.5-13B-Q4_K_M.gguf'}"
        in lines
    )
    assert f"LORA_PATH={models / 'IlyaGusev--gigasaiga_lora.gguf'}" in lines
    assert "TEMPLATE=gigasaiga" in lines


# --- info ----------------------------------------------------------------------------------


def test_info_reads_the_header_of_the_tiny_model(tiny_gguf: Path) -> None:
    import llama_cpp

    info = read_gguf_info(tiny_gguf)
    assert info.architecture == "gpt2"
    assert info.name == "domovoy-tiny-test"
    assert info.context_length == 2048
    assert info.quantization == "F16"
    assert info.tokenizer_model == "gpt2"
    assert info.chat_template is None
    # Compare with llama.cpp's own reading of the same file (vocabulary only, no weights).
    llm = llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)
    try:
        assert info.vocab_size == llm.n_vocab()
        assert info.parameter_count == llama_cpp.llama_model_n_params(llm.model)
    finally:
        llm.close()


def test_cli_info_prints_an_embedded_template(tmp_path: Path) -> None:
    from tiny_model import build_tiny_gguf

    template = "{% for m in messages %}<s>{{ m.role }}\n{{ m.content }}</s>\n{% endfor %}"
    path = build_tiny_gguf(tmp_path / "templated.gguf", chat_template=template)
    result = _cli(["models", "info", str(path)], _cli_env(_closed_port_url(), tmp_path))
    assert result.returncode == 0, result.stderr
    assert "context length:  2048" in result.stdout
    assert "quantization:    F16" in result.stdout
    assert "    {% for m in messages %}<s>{{ m.role }}" in result.stdout


def test_info_on_malformed_files_is_one_sentence(tiny_gguf: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[:300])
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello, I am not a model\n")
    for path in (truncated, not_gguf):
        with pytest.raises(ModelLoadError) as caught:
            read_gguf_info(path)
        assert str(caught.value).startswith(f"{path} is not a valid GGUF file (")
        error = _one_sentence_error(
            _cli(["models", "info", str(path)], _cli_env(_closed_port_url(), tmp_path))
        )
        assert "is not a valid GGUF file" in error
    with pytest.raises(ModelError, match="does not exist"):
        read_gguf_info(tmp_path / "missing.gguf")


# --- resuming across runs ------------------------------------------------------------------

Q5 = "ruGPT-3.5-13B-Q5_K_M.gguf"
DOWNLOAD_Q5 = ["models", "download", "rugpt35-13b", "--quant", "Q5_K_M"]
HOLD = 15 * 1024 * 1024  # where the hub goes quiet during the first run


def _q5_paths(data_dir: Path) -> tuple[Path, Path, Path]:
    target = data_dir / "models" / "oblivious--ruGPT-3.5-13B-GGUF" / Q5
    return target, target.with_name(Q5 + ".part"), target.with_name(Q5 + ".part.json")


def _download_killed_mid_file(hub: FakeHub, data_dir: Path) -> int:
    """Run `domovoy models download` until the hub goes quiet mid-file, then SIGKILL it.

    Returns how many bytes the partial file kept."""
    target, part, _stamp = _q5_paths(data_dir)
    hub.hold_at[Q5] = HOLD
    proc = subprocess.Popen(
        [sys.executable, "-c", "from bot.cli import main; main()", *DOWNLOAD_Q5],
        env=_cli_env(hub.url, data_dir),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        last = -1
        while True:  # until the partial file has grown and stopped growing
            size = part.stat().st_size if part.exists() else 0
            if size > 0 and size == last:
                break
            assert proc.poll() is None, "the first run ended on its own"
            assert time.monotonic() < deadline, "the partial file never grew"
            last = size
            time.sleep(0.5)
    finally:
        proc.kill()  # SIGKILL: no clean-up code of the client runs
        proc.wait()
    del hub.hold_at[Q5]
    assert not target.exists()
    return part.stat().st_size


def test_download_killed_mid_file_continues_in_the_next_run(
    hub: FakeHub, tmp_path: Path, payloads: dict[str, bytes]
) -> None:
    target, part, stamp = _q5_paths(tmp_path)
    kept = _download_killed_mid_file(hub, tmp_path)
    assert 0 < kept < BIG
    assert hub.served[Q5] == [HOLD]
    assert part.read_bytes() == payloads["big"][:kept]

    result, stderr = _cli_on_a_terminal(DOWNLOAD_Q5, _cli_env(hub.url, tmp_path))
    assert result.returncode == 0, stderr
    # The progress bar starts at what the first run kept, not at zero.
    first_frame = next(frame for frame in stderr.split("\r") if Q5 in frame)
    assert f"{tqdm.format_sizeof(kept)}/25.2M" in first_frame, first_frame
    assert f"{kept * 100 / BIG:3.0f}%|" in first_frame  # tqdm's own rounding
    gets = hub.resolve_requests(Q5)
    assert len(gets) == 2 and "range" not in gets[0].headers
    assert gets[1].headers["range"] == f"bytes={kept}-"
    assert hub.served[Q5] == [HOLD, BIG - kept]  # the second run fetched only the rest
    assert target.read_bytes() == payloads["big"]
    assert not part.exists() and not stamp.exists()
    assert f"MODEL_PATH={target}" in result.stdout.splitlines()


def test_disk_check_counts_only_the_bytes_a_partial_file_lacks(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payloads: dict[str, bytes]
) -> None:
    kept = _download_killed_mid_file(hub, tmp_path)
    missing = BIG - kept
    real = shutil.disk_usage
    free = {"bytes": missing - 1}

    def reported(path: str | os.PathLike[str]) -> object:
        total, used, _free = real(path)
        return type(real(path))(total, used, free["bytes"])

    monkeypatch.setattr(shutil, "disk_usage", reported)
    models_dir = tmp_path / "models"
    with pytest.raises(HubError) as caught:
        download("rugpt35-13b", "Q5_K_M", models_dir=models_dir, endpoint=hub.url)
    assert f"needs {human_size(missing)} but only {human_size(missing - 1)} is free" in str(
        caught.value
    )
    assert len(hub.resolve_requests(Q5)) == 1  # refused before a byte was asked for

    free["bytes"] = missing  # exactly the rest of the file fits
    result = download("rugpt35-13b", "Q5_K_M", models_dir=models_dir, endpoint=hub.url)
    assert result.model_path.read_bytes() == payloads["big"]
    assert hub.resolve_requests(Q5)[-1].headers["range"] == f"bytes={kept}-"


def test_partial_file_of_another_revision_is_discarded(
    hub: FakeHub, tmp_path: Path, payloads: dict[str, bytes]
) -> None:
    target, part, stamp = _q5_paths(tmp_path)
    kept = _download_killed_mid_file(hub, tmp_path)
    # Meanwhile the file is pushed again: same name and size, other bytes, so another etag.
    newer = np.random.default_rng(1).bytes(BIG)
    hub.replace_file(RUGPT, Q5, newer, commit="fedcba9876543210fedcba9876543210fedcba98")
    assert json.loads(stamp.read_text())["etag"] != hashlib.sha256(newer).hexdigest()

    result = download("rugpt35-13b", "Q5_K_M", models_dir=tmp_path / "models", endpoint=hub.url)
    assert result.model_path == target
    assert target.read_bytes() == newer  # not the old revision's start with the new one's end
    second = hub.resolve_requests(Q5)[-1]
    assert "range" not in second.headers
    assert hub.served[Q5] == [HOLD, BIG]
    assert kept > 0 and not part.exists() and not stamp.exists()


def test_corrupted_partial_file_is_caught_by_sha256_and_removed(
    hub: FakeHub, tmp_path: Path, payloads: dict[str, bytes]
) -> None:
    target, part, stamp = _q5_paths(tmp_path)
    kept = _download_killed_mid_file(hub, tmp_path)
    with part.open("r+b") as damaged:  # a bad disk sector in the middle of what was kept
        damaged.seek(kept // 2)
        damaged.write(b"\0" * 4096)

    models_dir = tmp_path / "models"
    with pytest.raises(HubError) as caught:
        download("rugpt35-13b", "Q5_K_M", models_dir=models_dir, endpoint=hub.url)
    assert str(caught.value) == (
        f"The downloaded {RUGPT}/{Q5} does not match the hub's sha256 checksum, so the damaged "
        "file was deleted: run the same command again to fetch it afresh."
    )
    assert hub.resolve_requests(Q5)[-1].headers["range"] == f"bytes={kept}-"
    assert not target.exists() and not part.exists() and not stamp.exists()

    # The next run starts from zero and ends with the right file.
    result = download("rugpt35-13b", "Q5_K_M", models_dir=models_dir, endpoint=hub.url)
    assert result.model_path.read_bytes() == payloads["big"]
    assert "range" not in hub.resolve_requests(Q5)[-1].headers
    assert hub.served[Q5] == [HOLD, BIG - kept, BIG]


def test_a_second_concurrent_download_of_the_same_file_is_refused(
    hub: FakeHub, tmp_path: Path, payloads: dict[str, bytes]
) -> None:
    target, part, _stamp = _q5_paths(tmp_path)
    part.parent.mkdir(parents=True)
    with part.open("wb") as other:  # another process holds the partial file
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(HubError) as caught:
            download("rugpt35-13b", "Q5_K_M", models_dir=tmp_path / "models", endpoint=hub.url)
    assert (
        str(caught.value) == f"Another download is writing {part} right now; wait for it to finish."
    )
    assert not hub.resolve_requests(Q5)
    assert not target.exists()
    result = download("rugpt35-13b", "Q5_K_M", models_dir=tmp_path / "models", endpoint=hub.url)
    assert result.model_path == target and target.read_bytes() == payloads["big"]
