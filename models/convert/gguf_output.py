"""Writing a GGUF file so that a failed or interrupted conversion leaves nothing half-written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gguf

from models.errors import ModelError


@contextmanager
def gguf_output(output: Path, arch: str, error: type[ModelError]) -> Iterator[gguf.GGUFWriter]:
    """A writer on a temporary file beside `output`; the block adds metadata and tensors, and
    only when it finishes is the file written out and renamed over `output`."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(
            dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"
        )
        os.close(handle)
    except OSError as exc:
        raise error(f"Could not write {output} ({exc.strerror or exc}).") from exc
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch)
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(output)
    except OSError as exc:
        raise error(f"Could not write {output} ({exc.strerror or exc}).") from exc
    finally:
        tmp.unlink(missing_ok=True)
