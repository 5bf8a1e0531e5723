"""Partial downloads on disk: the `.part` file and its stamp, free space, verification."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from models.errors import HubError
from models.files.registry import human_size

_SHA256 = re.compile(r"[0-9a-f]{64}")


def free_space(directory: Path) -> tuple[Path, int]:
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def require_space(directory: Path, needed: int, what: str) -> None:
    where, free = free_space(directory)
    if needed > free:
        raise HubError(
            f"Not enough disk space in {where}: {what} needs {human_size(needed)} "
            f"but only {human_size(free)} is free."
        )


def part_paths(local: Path) -> tuple[Path, Path]:
    return local.with_name(local.name + ".part"), local.with_name(local.name + ".part.json")


def read_stamp(stamp: Path) -> dict[str, object] | None:
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def on_disk(local: Path, size: int) -> int:
    """Bytes of this file already here: all of it, or what a stamped partial file holds."""
    if local.is_file() and local.stat().st_size == size:
        return size
    part, stamp = part_paths(local)
    if part.is_file() and (read_stamp(stamp) or {}).get("size") == size:
        return min(part.stat().st_size, size)
    return 0


def verify(part: Path, stamp: Path, size: int, etag: str, what: str) -> None:
    got = part.stat().st_size
    if got != size:
        raise HubError(f"The download of {what} stopped at {got} of {size} bytes; run it again.")
    if _SHA256.fullmatch(etag) is None:
        return  # a small git-stored file: its etag is a git hash, not the content's sha256
    with part.open("rb") as data:
        digest = hashlib.file_digest(data, "sha256").hexdigest()
    if digest != etag:
        part.unlink()
        stamp.unlink(missing_ok=True)
        raise HubError(
            f"The downloaded {what} does not match the hub's sha256 checksum, so the damaged "
            "file was deleted: run the same command again to fetch it afresh."
        )
