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
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.runtime.state_file import (
    SUFFIX,
    DamagedStateFile,
    KeptState,
    StaleStateFile,
    StateIdentity,
    key_digest,
    read_state_file,
    write_state_file,
)

logger = logging.getLogger(__name__)

DEFAULT_RAM_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class StateCacheConfig:
    """Settings: `STATE_CACHE`, `STATE_CACHE_RAM`, `STATE_CACHE_DISK`, `DATA_DIR/state-cache`."""

    enabled: bool = True
    ram_bytes: int = DEFAULT_RAM_BYTES
    disk_bytes: int = 0
    directory: Path | None = None


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
                _make_private_dir(directory)
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


def _make_private_dir(path: Path) -> None:
    """Create `path` and its missing parents as 0700 whatever the umask: kept states are
    conversations in another form. (State files are 0600: mkstemp creates them so.) Existing
    folders are left alone; they may be shared on purpose."""
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
            folder.chmod(0o700)
