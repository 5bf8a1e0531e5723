"""Read tensors from a `torch.save` file without torch and without running pickled code.

Why not `torch.load(weights_only=True)`: torch is a ~800 MB dependency the bot does not need
at run time, and `models download` converts adapters on the user's server. The zip format
torch has written since 1.6 is simple: `data.pkl` describes the tensors, `data/N` holds their
raw little-endian storages. The pickle is read by an Unpickler that resolves only the handful
of globals a tensor dictionary needs, mapped onto local numpy functions; any other global
(`os.system`, `builtins.eval`, ...) stops the read before anything is called.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ModelError

_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "DoubleStorage": "float64",
    "BFloat16Storage": "bfloat16",
}


class CheckpointError(ModelError):
    """A weights file that cannot be read safely."""


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


def bf16_to_f32(halves: np.ndarray) -> np.ndarray:
    """numpy has no bfloat16: a bf16 value's bits are the upper half of a float32, which holds
    every bf16 exactly. `halves` are the raw little-endian 16-bit words."""
    return (halves.astype(np.uint32) << 16).view(np.float32)


def _to_float_array(raw: bytes, kind: str) -> np.ndarray:
    if kind == "bfloat16":
        return bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
    return np.frombuffer(raw, dtype=np.dtype(kind).newbyteorder("<"))


def _rebuild_tensor(
    storage: np.ndarray,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_ignored: Any,
) -> np.ndarray:
    if any(n < 0 for n in size) or any(st < 0 for st in stride) or offset < 0:
        raise pickle.UnpicklingError("a tensor has a negative size, stride or offset")
    last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
    if all(size) and last >= len(storage):
        raise pickle.UnpicklingError("a tensor reaches past the end of its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:],
        shape=size,
        strides=[st * storage.itemsize for st in stride],
        writeable=False,
    )
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *_ignored: Any) -> np.ndarray:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str, data: Any) -> None:
        super().__init__(data)
        self._archive = archive
        self._prefix = prefix

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("unexpected persistent id")
        storage_type, key = pid[1], pid[2]
        if not isinstance(storage_type, _StorageType) or not str(key).isdigit():
            raise pickle.UnpicklingError("unexpected storage reference")
        raw = self._archive.read(f"{self._prefix}data/{key}")
        return _to_float_array(raw, storage_type.name)


def load_torch_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a `torch.save`d dictionary, as float numpy arrays."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not in torch's zip format (older torch pickles cannot be read safely); "
            "save it again as safetensors."
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is a zip file but not a torch checkpoint.")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise CheckpointError(f"{path} was saved on a big-endian machine; not supported.")
        try:
            with archive.open(pickles[0]) as data:
                state = _RestrictedUnpickler(archive, prefix, data).load()
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
            raise CheckpointError(
                f"{path} was not loaded because it holds more than plain tensors ({exc})."
            ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} does not hold a plain dictionary of tensors.")
    return dict(state)
