"""Kept model states: each conversation's tokens and KV cache, in RAM and on disk.

A state is only ever a prefix of some prompt: the KV cache of `tokens`, nothing else (no
logits, no sampler). Restoring it and evaluating the rest of a prompt gives what a cold
evaluation gives, so a kept state is safe to use whenever its tokens start the new prompt.

RAM holds the most recently used states up to a byte budget; the least recently used one
moves to disk, which has its own budget and drops its least recently used files. A disk file
is written atomically and carries what it was made with (model file, LoRA and scale, context
settings, llama.cpp version) plus a checksum; a file that does not match or does not check out
is deleted, never trusted.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import struct
import tempfile
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import llama_cpp
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

MAGIC = b"DOMOVKV\x00"
FORMAT_VERSION = 1
SUFFIX = ".kvstate"
_LENGTH = struct.Struct("<I")

DEFAULT_RAM_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class FileStamp:
    """Names one version of a file without reading it: a re-downloaded model gets a new stamp."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        resolved = path.resolve()
        stat = resolved.stat()
        return cls(str(resolved), stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class StateIdentity:
    """Everything a KV cache depends on besides its tokens."""

    model: FileStamp
    lora: FileStamp | None
    lora_scale: float
    n_ctx: int
    n_batch: int
    n_ubatch: int
    type_k: int
    type_v: int
    flash_attn: int
    # Layers computed on a GPU give slightly different numbers than on the CPU.
    n_gpu_layers: int
    llama_cpp: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StateCacheConfig:
    """Settings: `STATE_CACHE`, `STATE_CACHE_RAM`, `STATE_CACHE_DISK`, `DATA_DIR/state-cache`."""

    enabled: bool = True
    ram_bytes: int = DEFAULT_RAM_BYTES
    disk_bytes: int = 0
    directory: Path | None = None


@dataclass
class KeptState:
    tokens: npt.NDArray[np.intc]
    data: bytearray  # llama_state_seq_get_data output for sequence 0

    @property
    def nbytes(self) -> int:
        return len(self.data) + int(self.tokens.nbytes)


@dataclass
class _DiskEntry:
    path: Path
    nbytes: int
    tokens: npt.NDArray[np.intc] | None = None  # read lazily from the header


@dataclass
class CacheStats:
    ram_bytes: int = 0
    disk_bytes: int = 0
    ram_states: int = 0
    disk_states: int = 0
    spilled: int = 0
    dropped_damaged: int = 0
    dropped_stale: int = 0
    evicted: int = 0


class DamagedStateFile(Exception):
    pass


class StaleStateFile(Exception):
    pass


def key_digest(key: str) -> str:
    """File names never carry the key itself: it holds user ids."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def _checksum(tokens: npt.NDArray[np.intc], data: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(data, zlib.crc32(tokens.astype("<i4").tobytes()))


def write_state_file(path: Path, identity: StateIdentity, digest: str, state: KeptState) -> int:
    """Write atomically (temporary file, fsync, rename); returns the file's size."""
    tokens = state.tokens.astype("<i4")
    header = json.dumps(
        {
            "format": FORMAT_VERSION,
            "key": digest,
            "identity": identity.to_json(),
            "n_tokens": len(tokens),
            "payload_bytes": len(state.data),
            "crc32": _checksum(tokens, state.data),
        }
    ).encode("utf-8")
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(MAGIC)
            out.write(_LENGTH.pack(len(header)))
            out.write(header)
            out.write(tokens.tobytes())
            out.write(state.data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return path.stat().st_size


def _read_header(
    handle: BinaryIO, size: int, identity: StateIdentity, digest: str | None
) -> tuple[dict[str, Any], npt.NDArray[np.intc]]:
    if handle.read(len(MAGIC)) != MAGIC:
        raise DamagedStateFile("not a state file")
    raw_length = handle.read(_LENGTH.size)
    if len(raw_length) != _LENGTH.size:
        raise DamagedStateFile("truncated header")
    (length,) = _LENGTH.unpack(raw_length)
    if length > 1 << 20:
        raise DamagedStateFile("header too long")
    try:
        header = json.loads(handle.read(length).decode("utf-8"))
        n_tokens, payload = int(header["n_tokens"]), int(header["payload_bytes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DamagedStateFile("unreadable header") from exc
    if header.get("format") != FORMAT_VERSION:
        raise StaleStateFile("another format version")
    if header.get("identity") != identity.to_json():
        raise StaleStateFile("made with another model, adapter or context settings")
    if digest is not None and header.get("key") != digest:
        raise DamagedStateFile("belongs to another conversation")
    if n_tokens <= 0 or size != len(MAGIC) + _LENGTH.size + length + 4 * n_tokens + payload:
        raise DamagedStateFile("size does not match its header")
    tokens = np.frombuffer(handle.read(4 * n_tokens), dtype="<i4").astype(np.intc)
    return header, tokens


def read_state_file(
    path: Path, identity: StateIdentity, digest: str | None = None, *, payload: bool = True
) -> tuple[npt.NDArray[np.intc], bytearray | None]:
    """Tokens (and the KV payload) of a valid file; raises Damaged/StaleStateFile otherwise."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        header, tokens = _read_header(handle, size, identity, digest)
        if not payload:
            return tokens, None
        data = bytearray(int(header["payload_bytes"]))
        if handle.readinto(data) != len(data):
            raise DamagedStateFile("truncated payload")
    if _checksum(tokens, data) != header["crc32"]:
        raise DamagedStateFile("checksum mismatch")
    return tokens, data


class StateCache:
    """Two-tier LRU of kept states, keyed by conversation. Used from one thread only."""

    def __init__(
        self,
        identity: StateIdentity,
        *,
        ram_bytes: int,
        disk_bytes: int = 0,
        directory: Path | None = None,
    ) -> None:
        self.identity = identity
        self.ram_budget = max(0, ram_bytes)
        self.disk_budget = max(0, disk_bytes) if directory is not None else 0
        self.directory = directory
        self._ram: OrderedDict[str, KeptState] = OrderedDict()
        self._disk: OrderedDict[str, _DiskEntry] = OrderedDict()
        self._ram_used = 0
        self._disk_used = 0
        self.stats = CacheStats()
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                self._scan()
            except OSError as exc:
                logger.warning("Kept states stay in RAM: %s is not usable (%s).", directory, exc)
                self.directory, self.disk_budget = None, 0

    # -- lookups ---------------------------------------------------------------------------

    def tokens(self, key: str) -> npt.NDArray[np.intc] | None:
        """The tokens of the state kept for `key`, without loading its KV payload."""
        if key in self._ram:
            return self._ram[key].tokens
        digest = key_digest(key)
        entry = self._disk.get(digest)
        if entry is None:
            return None
        if entry.tokens is None:
            try:
                entry.tokens, _ = read_state_file(entry.path, self.identity, digest, payload=False)
            except (DamagedStateFile, StaleStateFile, OSError) as exc:
                self._drop_file(digest, exc)
                return None
        return entry.tokens

    def load(self, key: str) -> KeptState | None:
        """The whole state, checksum verified, marked as most recently used."""
        if key in self._ram:
            self._ram.move_to_end(key)
            return self._ram[key]
        digest = key_digest(key)
        entry = self._disk.get(digest)
        if entry is None:
            return None
        try:
            tokens, data = read_state_file(entry.path, self.identity, digest)
        except (DamagedStateFile, StaleStateFile, OSError) as exc:
            self._drop_file(digest, exc)
            return None
        assert data is not None
        self._disk.move_to_end(digest)
        with contextlib.suppress(OSError):
            os.utime(entry.path)  # the file's mtime is its LRU rank after a restart
        return KeptState(tokens, data)

    def ram_keys(self) -> list[str]:
        """Keys held in RAM, least recently used first."""
        return list(self._ram)

    def disk_digests(self) -> list[str]:
        """`key_digest`s of the files on disk, least recently used first."""
        return list(self._disk)

    def __contains__(self, key: str) -> bool:
        return key in self._ram or key_digest(key) in self._disk

    # -- updates ---------------------------------------------------------------------------

    def put(self, key: str, state: KeptState) -> None:
        """Keep `state` for `key`, replacing whatever was kept for it before."""
        self.drop(key)
        if state.nbytes <= self.ram_budget:
            self._ram[key] = state
            self._ram_used += state.nbytes
            while self._ram_used > self.ram_budget:
                old_key, old = self._ram.popitem(last=False)
                self._ram_used -= old.nbytes
                self._spill(old_key, old)
        else:
            self._spill(key, state)
        self._update_stats()

    def drop(self, key: str) -> None:
        """Forget the state kept for `key`, in RAM and on disk."""
        old = self._ram.pop(key, None)
        if old is not None:
            self._ram_used -= old.nbytes
        digest = key_digest(key)
        entry = self._disk.pop(digest, None)
        if entry is not None:
            self._disk_used -= entry.nbytes
        if self.directory is not None:
            # Also a file this process never indexed: forgetting must leave nothing behind.
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{digest}{SUFFIX}").unlink()
        self._update_stats()

    # -- internals -------------------------------------------------------------------------

    def _spill(self, key: str, state: KeptState) -> None:
        if self.directory is None or state.nbytes > self.disk_budget:
            self.stats.evicted += 1
            return
        digest = key_digest(key)
        path = self.directory / f"{digest}{SUFFIX}"
        try:
            size = write_state_file(path, self.identity, digest, state)
        except OSError as exc:
            logger.warning("could not write a kept state to %s: %s", path, exc)
            self.stats.evicted += 1
            return
        self.stats.spilled += 1
        self._disk[digest] = _DiskEntry(path, size, state.tokens)
        self._disk_used += size
        self._trim_disk()

    def _trim_disk(self) -> None:
        while self._disk_used > self.disk_budget and self._disk:
            _, entry = self._disk.popitem(last=False)
            self._disk_used -= entry.nbytes
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()

    def _drop_file(self, digest: str, reason: Exception) -> None:
        entry = self._disk.pop(digest, None)
        if entry is None:
            return
        self._disk_used -= entry.nbytes
        if isinstance(reason, StaleStateFile):
            self.stats.dropped_stale += 1
        else:
            self.stats.dropped_damaged += 1
        logger.info("deleting kept state %s: %s", entry.path.name, reason)
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        self._update_stats()

    def _scan(self) -> None:
        """Index the files a previous run left: oldest first; stale or broken ones go."""
        assert self.directory is not None
        for leftover in self.directory.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()  # a write interrupted by a crash
        found: list[tuple[int, str, Path, int]] = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            digest = path.name.removesuffix(SUFFIX)
            try:
                stat = path.stat()
                read_state_file(path, self.identity, digest, payload=False)
            except (DamagedStateFile, StaleStateFile, OSError) as exc:
                logger.info("deleting kept state %s: %s", path.name, exc)
                if isinstance(exc, StaleStateFile):
                    self.stats.dropped_stale += 1
                else:
                    self.stats.dropped_damaged += 1
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found.append((stat.st_mtime_ns, digest, path, stat.st_size))
        for _, digest, path, size in sorted(found):
            self._disk[digest] = _DiskEntry(path, size)
            self._disk_used += size
        self._trim_disk()
        self._update_stats()

    def _update_stats(self) -> None:
        self.stats.ram_bytes = self._ram_used
        self.stats.disk_bytes = self._disk_used
        self.stats.ram_states = len(self._ram)
        self.stats.disk_states = len(self._disk)


class _Context(Protocol):
    n_tokens: int
    input_ids: npt.NDArray[np.intc]

    @property
    def ctx(self) -> Any: ...


def capture(llama: _Context) -> KeptState:
    """Copy the live context's sequence: its tokens and their KV cells, no logits."""
    n_tokens = llama.n_tokens
    memory = llama_cpp.llama_get_memory(llama.ctx)
    # Cells past n_tokens can linger after a cancelled prompt; they are not part of the state.
    llama_cpp.llama_memory_seq_rm(memory, 0, n_tokens, -1)
    size = int(llama_cpp.llama_state_seq_get_size(llama.ctx, 0))
    data = bytearray(size)
    buffer = (ctypes.c_uint8 * size).from_buffer(data)
    written = int(llama_cpp.llama_state_seq_get_data(llama.ctx, buffer, size, 0))
    del buffer  # releases the export, so the bytearray can shrink
    if written <= 0:
        raise RuntimeError("llama.cpp could not copy the sequence state")
    del data[written:]
    return KeptState(np.array(llama.input_ids[:n_tokens], dtype=np.intc), data)


def restore(llama: _Context, state: KeptState) -> bool:
    """Replace the live context with `state`; on failure the context is left empty."""
    memory = llama_cpp.llama_get_memory(llama.ctx)
    # An empty cache puts the restored cells where a cold evaluation would have put them.
    llama_cpp.llama_memory_clear(memory, True)
    buffer = (ctypes.c_uint8 * len(state.data)).from_buffer(state.data)
    loaded = int(llama_cpp.llama_state_seq_set_data(llama.ctx, buffer, len(state.data), 0))
    del buffer
    if loaded == 0:
        llama_cpp.llama_memory_clear(memory, True)
        llama.n_tokens = 0
        return False
    n_tokens = len(state.tokens)
    llama.input_ids[:n_tokens] = state.tokens
    llama.n_tokens = n_tokens
    return True


def scrub(llama: _Context) -> None:
    """Empty the live context, KV cells and token ids alike."""
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llama.ctx), True)
    llama.input_ids[:] = 0
    llama.n_tokens = 0


def common_prefix(kept: npt.NDArray[np.intc], prompt: npt.NDArray[np.intc]) -> int:
    n = min(len(kept), len(prompt))
    differ = np.flatnonzero(kept[:n] != prompt[:n])
    return int(differ[0]) if len(differ) else n
