"""Decoded pixels on disk: decode a folder once, every later run reads the rows.

:func:`cached_pixels` decodes image files with the scan's worker processes (every core; each
worker writes its rows straight into a raw file, :mod:`imgcls.data.scan`) into
``$IMGCLS_CACHE/pixels/<key>.u8``, keyed by every file's path, size and modification time, the
image size and the decoder's settings, so a changed file or setting gets a new cache and an
unchanged folder is never decoded twice. Small sets come back as arrays in memory; larger ones
as :class:`DiskRows`, rows read with ``pread`` when asked for (never mapped, so passes over
tens of thousands of photos do not grow the process's resident memory). The least recently used
caches are deleted beyond :data:`MAX_CACHE_BYTES`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from imgcls.data.decode import PREPROCESSING
from imgcls.io import TMP_PREFIX, atomic_path, cache_root, write_json

CACHE_FORMAT = 1  # bump when the decoder's output changes: older caches are then never read
# Decoded sets up to this size are read into memory (CIFAR-10's 50,000 at 32x32: 153 MB); larger
# ones are read row by row from disk (30,000 photos at 224x224 are 4.5 GB).
IN_MEMORY_MAX_BYTES = 1 << 30
MAX_CACHE_BYTES = int(os.environ.get("IMGCLS_PIXEL_CACHE_GB", "20")) << 30  # LRU beyond this
READ_BLOCK_ROWS = 1024  # rows per read when a set is loaded into memory


class DiskRows:
    """Rows ``index`` of a raw file of ``(n, *row_shape)`` rows of ``dtype`` (starting
    ``offset`` bytes in: a ``.npy`` file's header), read on demand.

    Behaves like a read-only ``(len(index), *row_shape)`` array for ``len``, ``shape``, integer,
    slice and integer-array indexing (each returns a new in-memory array) and ``np.asarray``;
    :meth:`take` makes a sub-view without reading.
    """

    def __init__(self, path: str | os.PathLike, row_shape: tuple[int, ...], index=None,
                 dtype=np.uint8, offset: int = 0):  # fmt: skip
        self.path, self.row_shape = Path(path), tuple(row_shape)
        self.dtype, self.offset = np.dtype(dtype), int(offset)
        self.row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
        if index is None:
            index = np.arange((os.path.getsize(self.path) - self.offset) // self.row_bytes)
        self.index = np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def __len__(self) -> int:
        return len(self.index)

    def take(self, index) -> DiskRows:
        """The rows ``index`` of this view, as a view (nothing is read)."""
        return DiskRows(self.path, self.row_shape, self.index[np.asarray(index)], self.dtype,
                        self.offset)  # fmt: skip

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self._read(self.index[[key]])[0]
        if isinstance(key, slice):
            return self._read(self.index[key])
        if isinstance(key, tuple):
            return self[key[0]][(slice(None), *key[1:])]
        return self._read(self.index[np.asarray(key)])

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, self.dtype)
        for start in range(0, len(self), READ_BLOCK_ROWS):
            out[start : start + READ_BLOCK_ROWS] = self[start : start + READ_BLOCK_ROWS]
        return out if dtype is None else out.astype(dtype)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the order asked, reading each run of consecutive rows at once."""
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        if not len(rows):
            return out
        flat = out.reshape(len(rows), -1).view(np.uint8)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for run in np.split(np.arange(len(rows)), breaks):
                first, n = int(sorted_rows[run[0]]), len(run)
                data = os.pread(fd, n * self.row_bytes, self.offset + first * self.row_bytes)
                flat[order[run]] = np.frombuffer(data, np.uint8).reshape(n, self.row_bytes)
        finally:
            os.close(fd)
        return out


class Decoded(NamedTuple):
    """A decoded set: what :func:`cached_pixels` and
    :func:`~imgcls.data.pipeline.decode_images` return.

    Attributes:
        pixels: uint8 ``(n_ok, H, W, 3)``, an array or (above :data:`IN_MEMORY_MAX_BYTES`)
            :class:`DiskRows`.
        ok: a boolean mask over the input of the images that decoded.
        issues: one ``{"path", "kind", "detail"}`` per file left out.
        dhash: the difference hash (:func:`~imgcls.data.hashing.dhash`) of each row of
            ``pixels``, computed while decoding and kept beside the pixels, so a later run
            does not hash 50,000 images again (1 s); ``None`` where the source had none.
    """

    pixels: np.ndarray | DiskRows
    ok: np.ndarray
    issues: list[dict]
    dhash: np.ndarray | None = None


def take_rows(pixels, index: np.ndarray):
    """Rows ``index`` of ``pixels``: a copy of an array, a view of :class:`DiskRows`."""
    return pixels.take(index) if isinstance(pixels, DiskRows) else pixels[index]


def cache_folder() -> Path:
    """``$IMGCLS_CACHE/pixels`` (default ``~/.cache/imgcls/pixels``)."""
    return cache_root() / "pixels"


def cache_key(paths: list[str], size: tuple[int, int]) -> str:
    """What decides the decoded pixels: each file's path, size and modification time, the
    image size and the decoder's settings."""
    h = hashlib.sha256(json.dumps([CACHE_FORMAT, list(size), PREPROCESSING]).encode())
    for path in paths:
        try:
            st = os.stat(path)
            h.update(f"{os.path.abspath(path)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(path)}\tmissing\n".encode())
    return h.hexdigest()[:32]


def cached_pixels(
    paths: list[str],
    size: tuple[int, int],
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Decoded:
    """The decoded pixels of ``paths`` at ``size``, from the disk cache or decoded into it
    (with their difference hashes)."""
    folder = cache_folder()
    key = cache_key(paths, size)
    raw, meta = folder / f"{key}.u8", folder / f"{key}.json"
    record = _read_record(meta, raw, len(paths), size)
    if record is None:
        record = _decode(paths, size, raw, workers, progress)
        write_json(meta, record)  # last: a cache without its record is never read
        _evict(folder, keep=raw)
    os.utime(meta)  # recently used
    ok = np.zeros(len(paths), bool)
    ok[record["ok"]] = True
    rows = DiskRows(raw, (size[0], size[1], 3)).take(record["ok"])
    try:
        dhash = np.load(_dhash_file(raw), allow_pickle=False)
    except (OSError, ValueError):  # a cache written before the hashes were kept
        dhash = None
    if dhash is not None and len(dhash) != len(rows):
        dhash = None
    return Decoded(in_memory_if_small(rows), ok, record["issues"], dhash)


def in_memory_if_small(rows: DiskRows) -> np.ndarray | DiskRows:
    """``rows`` read into memory (training gathers batches from them every step) up to
    :data:`IN_MEMORY_MAX_BYTES`; above it, left to be read when asked for."""
    return np.asarray(rows) if len(rows) * rows.row_bytes <= IN_MEMORY_MAX_BYTES else rows


def _dhash_file(raw: Path) -> Path:
    return raw.with_suffix(".dhash.npy")


def _read_record(meta: Path, raw: Path, n: int, size: tuple[int, int]) -> dict | None:
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
        whole = raw.stat().st_size == n * size[0] * size[1] * 3
    except (OSError, ValueError):
        return None
    return record if whole and record.get("n") == n else None


def _decode(paths, size, raw: Path, workers, progress) -> dict:
    """Decode ``paths`` into ``raw`` with the scan's workers; the cache's record."""
    from imgcls.data.scan import UNUSABLE_KINDS, scan_files

    raw.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(raw) as tmp:
        scan = scan_files(paths, size, str(tmp), workers, progress)
    with atomic_path(_dhash_file(raw)) as tmp, open(tmp, "wb") as f:
        np.save(f, scan.dhash[scan.usable].astype(np.uint64))
    issues = [
        {k: i[k] for k in ("path", "kind", "detail")}
        for i in scan.issues
        if i["kind"] in UNUSABLE_KINDS
    ]
    return {"n": len(paths), "size": list(size), "ok": np.flatnonzero(scan.usable).tolist(),
            "issues": issues, "created": time.time()}  # fmt: skip


def _evict(folder: Path, keep: Path) -> None:
    """Delete the least recently used caches while all of them hold over MAX_CACHE_BYTES."""
    entries = []
    for meta in folder.glob("*.json"):
        raw = meta.with_suffix(".u8")
        if raw != keep and raw.is_file():
            entries.append((meta.stat().st_mtime, raw.stat().st_size, meta, raw))
    total = sum(size for _, size, _, _ in entries) + keep.stat().st_size
    for _, size, meta, raw in sorted(entries):
        if total <= MAX_CACHE_BYTES:
            break
        meta.unlink(missing_ok=True)
        raw.unlink(missing_ok=True)
        _dhash_file(raw).unlink(missing_ok=True)
        total -= size
    for stale in folder.glob(f"{TMP_PREFIX}*"):  # a decode that was killed
        if time.time() - stale.stat().st_mtime > 3600:
            stale.unlink(missing_ok=True)
