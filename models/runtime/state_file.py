"""The file format of a kept state: a header naming what it was made with, its tokens, the
KV payload, and a checksum. Written atomically; a file that does not match or does not check
out raises, and the cache deletes it rather than trust it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

MAGIC = b"DOMOVKV\x00"
FORMAT_VERSION = 1
SUFFIX = ".kvstate"
_LENGTH = struct.Struct("<I")


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
    # Sequences in the context: conservative, a state is only restored where it was made.
    n_seq_max: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class KeptState:
    tokens: npt.NDArray[np.intc]
    data: bytearray  # llama_state_seq_get_data output for sequence 0

    @property
    def nbytes(self) -> int:
        return len(self.data) + int(self.tokens.nbytes)


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
