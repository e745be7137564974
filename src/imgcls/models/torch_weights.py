"""PyTorch state dicts read with NumPy: no torch needed, and nothing but tensors accepted.

A ``.pth`` file is a pickle whose tensors point at raw storage records, either in a zip archive
(``torch.save`` since PyTorch 1.6: ``<name>/data.pkl`` and ``<name>/data/<key>``) or, in the
legacy format, in the same stream after the pickle (a list of storage keys, then for each key
its element count as int64 and its bytes). :func:`read_state_dict` reads both with a restricted
unpickler: the only globals it resolves are the tensor rebuild functions, the storage types and
``collections.OrderedDict``; any other global (code a malicious file would run) is refused with
an error naming it, before anything else in the file is used.

Example:
    >>> arrays = read_state_dict("efficientnet-lite0-57934424.pth")  # doctest: +SKIP
    >>> arrays["_conv_stem.weight"].shape                              # doctest: +SKIP
    (32, 3, 3, 3)
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import ImgclsError, check

# torch storage class -> NumPy dtype (little-endian, as both formats store it on x86 and ARM)
STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",  # read as raw 16 bits, widened to float32 below
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy-format file


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(STORAGE_DTYPES[self.name])


class _Storage:
    """A storage record; its data arrives after the pickle in the legacy format."""

    def __init__(self, kind: _StorageType, numel: int):
        self.kind, self.numel = kind, int(numel)
        self.data: np.ndarray | None = None


@dataclass(frozen=True)
class _Tensor:
    """A tensor view of a storage, made into an array once every storage is read."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def array(self) -> np.ndarray:
        data = self.storage.data
        check(data is not None, "a tensor's storage was never read")
        itemsize = data.dtype.itemsize
        span = sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) + 1
        check(
            not self.size or 0 in self.size or self.offset + span <= len(data),
            f"a tensor of shape {self.size} reaches past its storage of {len(data)} elements",
        )
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], self.size, tuple(s * itemsize for s in self.stride)
        )
        out = np.array(view)  # a copy: the storage may be shared by several tensors
        if self.storage.kind.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor(storage, offset, size, stride, *unused) -> _Tensor:
    check(isinstance(storage, _Storage), "a tensor must be built on a storage record")
    return _Tensor(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused) -> _Tensor:
    return data


ALLOWED = {  # the globals a state dict may name, and what stands for them here
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "collections.OrderedDict": collections.OrderedDict,
    **{f"torch.{name}": _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED` globals; storage references become :class:`_Storage`."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED.get(f"{module}.{name}")
        if found is None:
            raise ImgclsError(
                f"{self.source} names {module}.{name}, which a file of weights never needs; "
                "refused (only tensors, storages and OrderedDict are read)"
            )
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        check(
            isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage"),
            f"{self.source} holds a persistent record that is not a tensor storage",
        )
        kind, key, numel = pid[1], str(pid[2]), pid[4]
        check(isinstance(kind, _StorageType), f"{self.source}: a storage of an unknown type")
        if key not in self.storages:
            self.storages[key] = _Storage(kind, numel)
        return self.storages[key]


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch state dict file as NumPy arrays, by name; torch is not used.

    Raises:
        ImgclsError: the file is missing, damaged, not a state dict, or names anything but
            tensors (see the module docstring).
    """
    path = Path(path)
    check(path.is_file(), f"weights file {path} does not exist")
    try:
        if zipfile.is_zipfile(path):
            state, storages = _read_zip(path)
        else:
            state, storages = _read_legacy(path)
    except ImgclsError:
        raise
    except Exception as e:  # noqa: BLE001 - pickle and zipfile raise many kinds on damage
        raise ImgclsError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from None
    check(isinstance(state, dict), f"{path} does not hold a state dict (a name -> tensor map)")
    missing = [k for k, s in storages.items() if s.data is None]
    check(not missing, f"{path} lacks the data of storage {missing[:1]}")
    out = {}
    for name, tensor in state.items():
        check(isinstance(tensor, _Tensor), f"{path}: entry {name!r} is not a tensor")
        out[str(name)] = tensor.array()
    return out


def _read_zip(path: Path) -> tuple[Any, dict[str, _Storage]]:
    with zipfile.ZipFile(path) as z:
        pickles = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        check(len(pickles) == 1, f"{path} is a zip file but not a PyTorch one (no data.pkl)")
        root = pickles[0][: -len("data.pkl")]
        order = (
            z.read(f"{root}byteorder").decode().strip()
            if f"{root}byteorder" in z.namelist()
            else "little"
        )
        check(order == "little", f"{path} stores its tensors {order}-endian; only little is read")
        unpickler = _Unpickler(io.BytesIO(z.read(pickles[0])), str(path))
        state = unpickler.load()
        for key, storage in unpickler.storages.items():
            raw = z.read(f"{root}data/{key}")
            storage.data = np.frombuffer(raw, storage.kind.dtype, count=storage.numel)
    return state, unpickler.storages


def _read_legacy(path: Path) -> tuple[Any, dict[str, _Storage]]:
    with open(path, "rb") as f:
        header = _Unpickler(f, str(path))
        check(header.load() == LEGACY_MAGIC, f"{path} is not a PyTorch file (wrong magic number)")
        header.load()  # protocol version
        info = header.load()
        check(
            isinstance(info, dict) and info.get("little_endian", True),
            f"{path} stores its tensors big-endian; only little-endian files are read",
        )
        unpickler = _Unpickler(f, str(path))
        state = unpickler.load()
        keys = _Unpickler(f, str(path)).load()
        check(isinstance(keys, list), f"{path} is damaged (no list of storages)")
        for key in keys:
            storage = unpickler.storages.get(str(key))
            check(storage is not None, f"{path} lists storage {key} that no tensor uses")
            numel = int.from_bytes(f.read(8), "little")
            check(
                numel == storage.numel,
                f"{path}: storage {key} has {numel} elements, not {storage.numel}",
            )
            raw = f.read(numel * storage.kind.dtype.itemsize)
            check(len(raw) == numel * storage.kind.dtype.itemsize, f"{path} is truncated")
            storage.data = np.frombuffer(raw, storage.kind.dtype)
    return state, unpickler.storages
