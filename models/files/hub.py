"""Find and fetch model files on the Hugging Face hub with huggingface_hub.

Which file holds a quantization is learned by listing the repository, never guessed. Every
failure the hub client can raise is turned into one sentence (`HubError`) that says what to do.
Downloads land in `models_dir/<owner>--<repo>/` and survive the command being stopped:
`hf_hub_download` deletes its temporary file on any failure, so the transfer is built here from
huggingface_hub's lower-level parts (`get_hf_file_metadata`, `http_get`), which keep its progress
bar, retries, HF_TOKEN and HF_ENDPOINT. Bytes go into a stable `<name>.part` next to the target,
with a `<name>.part.json` stamp (etag, commit, size); the next run continues it with a Range
request unless the hub now serves another file. The size (and the sha256, which is an LFS file's
etag) is checked before the atomic rename, so a complete file is always a verified one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from models.errors import HubError, HubUnreachable
from models.files.partial import on_disk, part_paths, read_stamp, require_space, verify
from models.files.registry import (
    DEFAULT_QUANT,
    ModelEntry,
    ad_hoc_entry,
    find_entry,
    human_size,
    quant_of,
    ram_estimate,
    split_stem,
    total_ram,
)

T = TypeVar("T")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True)
class QuantFile:
    quant: str
    paths: tuple[str, ...]  # a split GGUF has several parts; llama.cpp opens the first
    sizes: tuple[int, ...]

    @property
    def size(self) -> int:
        return sum(self.sizes)


@dataclass(frozen=True)
class RepoListing:
    entry: ModelEntry
    quants: tuple[QuantFile, ...] = ()
    adapter: QuantFile | None = None  # LoRA: adapter_config.json and the weights

    def quant(self, name: str) -> QuantFile | None:
        return next((q for q in self.quants if q.quant == name.upper()), None)


@dataclass
class DownloadResult:
    entry: ModelEntry
    model_path: Path
    lora_path: Path | None = None
    template: str = "gguf"
    warnings: list[str] = field(default_factory=list)


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The explicit endpoint, else HF_ENDPOINT now (not at import time), else the hub's."""
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def repo_dir_name(repo: str) -> str:
    return repo.replace("/", "--")


def check_reachable(endpoint: str, timeout: float = 5.0) -> None:
    """Fail fast when offline: the hub client would retry for half a minute first."""
    if any(os.environ.get(name) for name in _PROXY_VARS):
        return  # the proxy may reach what we cannot; let the client try
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise HubUnreachable(
            f"Cannot reach the Hugging Face hub at {endpoint} ({exc.strerror or exc}): "
            "check the network connection or HF_ENDPOINT."
        ) from exc


def _is_transport_error(exc: BaseException) -> bool:
    # huggingface_hub 1.x/2.x use httpx (or its fork httpx2), 0.x used requests.
    root = type(exc).__module__.split(".")[0]
    return root in {"httpx", "httpx2", "requests", "urllib3"} or isinstance(
        exc, ConnectionError | TimeoutError
    )


def _in_hf_home(filename: object) -> bool:
    from huggingface_hub import constants

    if not isinstance(filename, str | os.PathLike):
        return False
    return Path(filename).is_relative_to(Path(constants.HF_HOME))


@contextmanager
def hub_errors(repo: str, filename: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one clear sentence."""
    from huggingface_hub import errors  # complete since 1.0 (pyproject's floor)

    what = f"{repo}/{filename}" if filename else repo
    try:
        yield
    except HubError:
        raise
    except errors.GatedRepoError as exc:
        raise HubError(
            f"{repo} is gated: accept its conditions on the hub, then set HF_TOKEN."
        ) from exc
    except errors.RepositoryNotFoundError as exc:
        raise HubError(
            f"The hub has no model repository named {repo} "
            "(check the spelling; a private repository also needs HF_TOKEN)."
        ) from exc
    except errors.RevisionNotFoundError as exc:
        raise HubError(f"{repo} has no such revision on the hub.") from exc
    except errors.OfflineModeIsEnabled as exc:
        raise HubError(f"HF_HUB_OFFLINE is set, so {what} cannot be fetched.") from exc
    except errors.LocalEntryNotFoundError as exc:
        raise HubUnreachable(
            f"Cannot reach the Hugging Face hub to fetch {what}: check the network "
            "connection or HF_ENDPOINT."
        ) from exc
    except errors.EntryNotFoundError as exc:
        raise HubError(f"{repo} has no file {filename} on the hub.") from exc
    except errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            raise HubError(
                f"The hub refused access to {what} (HTTP {status}): check HF_TOKEN."
            ) from exc
        raise HubError(f"The hub answered HTTP {status} for {what}; try again later.") from exc
    except Exception as exc:
        if _is_transport_error(exc):
            raise HubUnreachable(
                f"The connection to the hub broke while fetching {what}: check the network "
                "and run the same command again."
            ) from exc
        if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
            raise HubError(
                f"The download of {what} ended short; run the same command again."
            ) from exc
        if isinstance(exc, OSError) and _in_hf_home(exc.filename):
            # huggingface_hub reads its token file under HF_HOME (~/.cache/huggingface) itself;
            # a HOME left over from another user (sudo without -H) lands here. Errors of our
            # own files go up to download(), which names the folder.
            raise HubError(
                f"Cannot use {exc.filename} ({exc.strerror or exc}): check that HOME and "
                "HF_HOME belong to the user running the command."
            ) from exc
        raise


def _call(repo: str, fn: Callable[[], T], filename: str | None = None) -> T:
    with hub_errors(repo, filename):
        return fn()


def list_repo(
    entry: ModelEntry, *, endpoint: str | None = None, token: str | None = None
) -> RepoListing:
    """The GGUF quantizations (or the PEFT adapter files) of one repository, with sizes."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=resolve_endpoint(endpoint), token=token)
    files = _call(
        entry.repo,
        lambda: [
            item
            for item in api.list_repo_tree(entry.repo, recursive=True)
            if isinstance(item, RepoFile)
        ],
    )
    sizes = {item.path: int(item.size) for item in files}
    if entry.kind == "lora":
        weights = next((name for name in ADAPTER_WEIGHTS if name in sizes), None)
        if ADAPTER_CONFIG not in sizes or weights is None:
            raise HubError(
                f"{entry.repo} holds no PEFT adapter ({ADAPTER_CONFIG} with "
                f"{' or '.join(ADAPTER_WEIGHTS)})."
            )
        names = (ADAPTER_CONFIG, weights)
        adapter = QuantFile("adapter", names, tuple(sizes[n] for n in names))
        return RepoListing(entry, adapter=adapter)

    # Group by quant, and within it by file: the parts of a split GGUF belong together.
    groups: dict[str, dict[str, list[str]]] = {}
    for path in sorted(sizes):
        quant = quant_of(path)
        if quant is not None:
            groups.setdefault(quant, {}).setdefault(split_stem(path), []).append(path)
    quants = []
    for quant, variants in groups.items():
        # Two files with one quant name (rare): offer the first, the other stays reachable
        # by its repository listing.
        paths = variants[min(variants)]
        quants.append(QuantFile(quant, tuple(paths), tuple(sizes[p] for p in paths)))
    return RepoListing(entry, quants=tuple(sorted(quants, key=lambda q: q.size)))


def lookup(name: str) -> ModelEntry:
    entry = find_entry(name)
    if entry is not None:
        return entry
    if name.count("/") == 1 and all(name.split("/")):
        return ad_hoc_entry(name)
    raise HubError(
        f"Unknown model {name!r}: run `domovoy models list` for the known names, "
        "or give a hub repository as owner/name."
    )


def _missing_bytes(target_dir: Path, files: QuantFile) -> int:
    return sum(
        size - on_disk(target_dir / path, size)
        for path, size in zip(files.paths, files.sizes, strict=True)
    )


def _fetch(
    repo: str, filename: str, size: int, local_dir: Path, *, endpoint: str, token: str | None
) -> Path:
    """Fetch one file into local_dir, continuing a partial file an earlier run left behind."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # lazy export

    local = local_dir / filename
    if local.is_file() and local.stat().st_size == size:
        return local  # only a verified download is ever renamed to this name
    url = hf_hub_url(repo, filename, endpoint=endpoint)
    meta = _call(repo, lambda: get_hf_file_metadata(url, token=token, endpoint=endpoint), filename)
    if meta.etag is None or meta.commit_hash is None:
        raise HubError(f"{endpoint} does not answer like a Hugging Face hub: check HF_ENDPOINT.")
    expected = meta.size if meta.size is not None else size
    headers = build_hf_headers(token=token)
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN address: the token stays with the hub
    part, stamp = part_paths(local)
    wanted = {"etag": meta.etag, "commit": meta.commit_hash, "size": expected}
    local.parent.mkdir(parents=True, exist_ok=True)
    part.touch()
    with part.open("r+b") as out:
        try:
            fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HubError(
                f"Another download is writing {part} right now; wait for it to finish."
            ) from None
        have = out.seek(0, os.SEEK_END)
        old = read_stamp(stamp) or {}
        if (old.get("etag"), old.get("size")) != (meta.etag, expected) or have > expected:
            have = out.seek(0)  # another revision's bytes, or of unknown origin: start over
            out.truncate()
            stamp.write_text(json.dumps(wanted))
        require_space(local_dir, expected - have, f"{repo}/{filename}")
        _call(
            repo,
            lambda: http_get(
                meta.location,
                out,
                resume_size=have,
                headers=headers,
                expected_size=expected,
                displayed_filename=filename,
            ),
            filename,
        )
        out.flush()
        verify(part, stamp, expected, meta.etag, f"{repo}/{filename}")
        os.replace(part, local)
    stamp.unlink(missing_ok=True)
    return local


def download(
    name: str,
    quant: str = DEFAULT_QUANT,
    *,
    models_dir: Path,
    n_ctx: int | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> DownloadResult:
    """Fetch a GGUF (or a LoRA adapter, converted, plus its base GGUF) into models_dir."""
    endpoint = resolve_endpoint(endpoint)
    entry = lookup(name)
    check_reachable(endpoint)

    base = find_entry(entry.base) if entry.base else entry
    if base is None:  # pragma: no cover - registry invariant
        raise HubError(f"The registry names no base model for {entry.name}.")
    base_listing = list_repo(base, endpoint=endpoint, token=token)
    chosen = base_listing.quant(quant)
    if chosen is None:
        available = ", ".join(q.quant for q in base_listing.quants) or "none"
        raise HubError(f"{base.repo} has no {quant.upper()} GGUF file (available: {available}).")

    adapter = None
    if entry.kind == "lora":
        adapter = list_repo(entry, endpoint=endpoint, token=token).adapter
    base_dir = models_dir / repo_dir_name(base.repo)
    adapter_dir = models_dir / repo_dir_name(entry.repo)

    # Up-front disk check: whatever is not on disk yet must fit before a byte is fetched.
    needed = _missing_bytes(base_dir, chosen)
    if adapter is not None:
        needed += _missing_bytes(adapter_dir, adapter) + adapter.size  # plus the converted GGUF
    require_space(models_dir, needed, entry.repo)

    result = DownloadResult(entry=entry, model_path=Path(), template=entry.template)
    estimate = ram_estimate(base, chosen.size, n_ctx)
    if estimate > total_ram():
        result.warnings.append(
            f"{base.repo} {chosen.quant} needs about {human_size(estimate)} of RAM and this "
            f"machine has {human_size(total_ram())}: expect swapping, or pick a smaller "
            "quantization."
        )

    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        if adapter is not None:
            for filename, size in zip(adapter.paths, adapter.sizes, strict=True):
                _fetch(entry.repo, filename, size, adapter_dir, endpoint=endpoint, token=token)
            output = models_dir / f"{repo_dir_name(entry.repo)}.gguf"
            result.lora_path = _convert_adapter(adapter_dir, output)

        paths = [
            _fetch(base.repo, path, size, base_dir, endpoint=endpoint, token=token)
            for path, size in zip(chosen.paths, chosen.sizes, strict=True)
        ]
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise HubError(
                f"The disk filled up while writing {exc.filename or models_dir}: free some space "
                "and run the same command again, it continues where it stopped."
            ) from exc
        # Typically DATA_DIR belongs to the service user and the command ran as someone else.
        raise HubError(
            f"Cannot write {exc.filename or models_dir} ({exc.strerror or exc}): run the "
            "command as the owner of that folder (for the service: runuser -u domovoy --) "
            "or point DATA_DIR at a folder you can write."
        ) from exc
    result.model_path = paths[0]
    return result


def _convert_adapter(adapter_dir: Path, output: Path) -> Path:
    try:
        from models.convert.lora import convert_lora
    except ImportError as exc:
        raise HubError(
            f"The adapter is in {adapter_dir}, but this build has no LoRA converter "
            "(models.convert.lora); convert it with `domovoy models convert-lora` once available."
        ) from exc
    try:
        convert_lora(adapter_dir, output)
    except ImportError as exc:  # safetensors or torch missing from this install
        raise HubError(
            f"Converting the adapter in {adapter_dir} needs the Python package "
            f"{exc.name or exc}: install it into this environment with pip."
        ) from exc
    return output
