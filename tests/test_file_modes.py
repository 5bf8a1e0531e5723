"""The database and the kept conversation states are readable by their owner only, whatever
the umask: files 0600 inside 0700 folders (outside systemd nothing else sets UMask=0077)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from models.runtime.state_cache import StateCache
from models.runtime.state_file import FileStamp, KeptState, StateIdentity
from storage.database import create_engine, migrate


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the usual one: new files 0644, new folders 0755
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def readable_files(path: Path) -> Path:
    """A database and its log as an older version left them: 0644."""
    wal = Path(f"{path}-wal")
    for file in (path, wal):
        file.touch(mode=0o644)
    return wal


def exists(path: Path) -> bool:
    return path.exists()


async def test_a_new_database_and_its_folders_are_private(tmp_path: Path, umask_022: None) -> None:
    shared = tmp_path / "shared"
    os.mkdir(shared, 0o755)
    data = shared / "home" / "data"
    db = create_engine(f"sqlite+aiosqlite:///{data / 'domovoy.db'}")
    try:
        await migrate(db)
        async with db.connect() as conn:  # open, so that the -wal and -shm files exist
            await conn.execute(text("CREATE TABLE scratch (x TEXT)"))
            await conn.execute(text("INSERT INTO scratch VALUES ('секрет')"))
            await conn.commit()
            files = [data / "domovoy.db", data / "domovoy.db-wal", data / "domovoy.db-shm"]
            assert {f.name: oct(mode(f)) for f in files} == {f.name: "0o600" for f in files}
    finally:
        await db.dispose()
    assert oct(mode(data)) == "0o700" and oct(mode(data.parent)) == "0o700"
    assert oct(mode(shared)) == "0o755"  # what existed is left as it was


async def test_an_older_readable_database_is_made_private(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "domovoy.db"
    wal = readable_files(path)
    db = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate(db)
    finally:
        await db.dispose()
    assert oct(mode(path)) == "0o600"
    assert not exists(wal) or oct(mode(wal)) == "0o600"


def test_kept_states_on_disk_are_private(tmp_path: Path, umask_022: None) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    identity = StateIdentity(FileStamp.of(model), None, 1.0, 512, 512, 512, 1, 1, 0, 0, "test")
    directory = tmp_path / "data" / "state-cache"
    cache = StateCache(identity, ram_bytes=0, disk_bytes=1 << 20, directory=directory)
    cache.put("1:1", KeptState(np.arange(8, dtype=np.intc), bytearray(b"kv" * 100)))
    files = list(directory.iterdir())
    assert len(files) == 1 and oct(mode(files[0])) == "0o600"
    assert oct(mode(directory)) == "0o700" and oct(mode(directory.parent)) == "0o700"
