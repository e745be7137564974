"""Scan image files in parallel: decode, hash and cache each one, keeping memory flat.

Every file is opened by the shared decoder (:func:`imgcls.data.decode.read_image`) in a pool
of worker processes (Pillow decoding and sha256 are CPU-bound). Each worker writes the pixels
it decoded, resized to the target size, straight into a raw cache file at the image's row, so
no pixels travel back to the parent and nothing grows with the number of images except a few
bytes of hashes per image. TensorFlow is never imported here.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from imgcls.data.decode import DecodeError, read_image
from imgcls.data.hashing import dhash, sha256_file

SCAN_CHUNK = 128  # files per worker task: amortises inter-process overhead, keeps progress smooth
MIN_SIDE = 8  # pixels: an image narrower or shorter than this is "too_small" and left out
UNUSABLE_KINDS = ("unreadable", "not_an_image", "too_large", "too_small")  # the file cannot be used


@dataclass
class ScanResult:
    """What the scan learned about each of ``n`` files, as compact arrays.

    Attributes:
        usable: the file decoded and is large enough.
        sha256: raw 32-byte digest per file (zeros when unreadable).
        dhash: 64-bit difference hash of the pixels at the target size.
        width, height: the original size in pixels (0 when unreadable).
        format, mode: the original format and Pillow mode ("" when unreadable).
        issues: one ``{"path", "kind", "detail"}`` per problem found in a single file
            (unusable files, converted modes, mismatched extensions), each with its ``index``.
    """

    usable: np.ndarray
    sha256: np.ndarray
    dhash: np.ndarray
    width: np.ndarray
    height: np.ndarray
    format: list[str]
    mode: list[str]
    issues: list[dict] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int) -> ScanResult:
        return cls(
            np.zeros(n, bool),
            np.zeros((n, 32), np.uint8),
            np.zeros(n, np.uint64),
            np.zeros(n, np.int32),
            np.zeros(n, np.int32),
            [""] * n,
            [""] * n,
        )


def scan_files(
    paths: list[str],
    size: tuple[int, int],
    cache_file: str,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    """Decode, hash and cache every file in ``paths``.

    Args:
        paths: image files to scan.
        size: ``(height, width)`` the cached pixels are resized to.
        cache_file: a raw file of ``len(paths) * height * width * 3`` bytes (created here);
            row ``i`` receives file ``i``'s pixels, zeros when it cannot be decoded.
        workers: worker processes; default: every core.
        progress: called with ``(files done, total)`` after each chunk.

    Returns:
        A :class:`ScanResult`. Bad files never raise; they become issues.
    """
    n = len(paths)
    with open(cache_file, "wb") as f:
        f.truncate(n * size[0] * size[1] * 3)
    result = ScanResult.empty(n)
    tasks = ((start, paths[start : start + SCAN_CHUNK]) for start in range(0, n, SCAN_CHUNK))
    workers = max(1, min(workers or os.cpu_count() or 1, (n + SCAN_CHUNK - 1) // SCAN_CHUNK))
    if workers == 1:
        _init_worker(size, cache_file)
        chunks = map(_scan_chunk, tasks)
        _collect(chunks, paths, result, progress)
    else:
        with _pool(workers, size, cache_file) as pool:
            _collect(pool.imap(_scan_chunk, tasks), paths, result, progress)
    return result


def _pool(workers: int, size: tuple[int, int], cache_file: str):
    """Forked worker processes; threads in a process that has loaded TensorFlow or Keras (forking
    it is unsafe, and a fresh interpreter would run the caller's script again if it lacks an
    ``if __name__ == "__main__"`` guard). Pillow releases the GIL while it decodes and resizes:
    1,912 photos of 384x512 took 3.4-3.7 s in two processes and 3.8-3.9 s in two threads."""
    loaded = any(m in sys.modules for m in ("tensorflow", "keras", "jax", "torch"))
    if not loaded and "fork" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("fork")
        return ctx.Pool(workers, initializer=_init_worker, initargs=(size, cache_file))
    from multiprocessing.pool import ThreadPool

    return ThreadPool(workers, initializer=_init_worker, initargs=(size, cache_file))


def _collect(chunks, paths: list[str], result: ScanResult, progress) -> None:
    done = 0
    for start, records in chunks:
        for offset, (kind, detail, digest, fmt, mode, w, h, conversion, ext_ok, dh) in enumerate(
            records
        ):
            i = start + offset
            result.format[i], result.mode[i] = fmt, mode
            result.width[i], result.height[i] = w, h
            if digest:
                result.sha256[i] = np.frombuffer(digest, np.uint8)
                result.dhash[i] = dh
            result.usable[i] = kind is None
            if kind is not None:
                result.issues.append({"index": i, "path": paths[i], "kind": kind, "detail": detail})
                continue
            if not ext_ok:
                ext = os.path.splitext(paths[i])[1]
                result.issues.append(
                    {
                        "index": i,
                        "path": paths[i],
                        "kind": "extension_mismatch",
                        "detail": f"content is {fmt} but the name ends in {ext}; read as {fmt}",
                    }
                )
            if conversion:
                result.issues.append(
                    {"index": i, "path": paths[i], "kind": "converted", "detail": conversion}
                )
        done += len(records)
        if progress is not None:
            progress(done, len(paths))


_WORKER: dict = {}


def _init_worker(size: tuple[int, int], cache_file: str) -> None:
    _WORKER.update(size=tuple(size), cache_file=cache_file, row_bytes=size[0] * size[1] * 3)


def _scan_chunk(task: tuple[int, list[str]]) -> tuple[int, list[tuple]]:
    """Scan one chunk of files and write its pixels at their rows of the cache file."""
    start, paths = task
    size, row_bytes = _WORKER["size"], _WORKER["row_bytes"]
    block = np.zeros((len(paths), size[0], size[1], 3), dtype=np.uint8)
    records = [_scan_one(path, size, block, k) for k, path in enumerate(paths)]
    fd = os.open(_WORKER["cache_file"], os.O_WRONLY)
    try:
        os.pwrite(fd, block.tobytes(), start * row_bytes)
    finally:
        os.close(fd)
    return start, records


def _scan_one(path: str, size: tuple[int, int], block: np.ndarray, k: int) -> tuple:
    """``(kind, detail, sha256 bytes, format, mode, width, height, conversion, extension_ok, dhash)``."""
    try:
        pixels, info = read_image(path, size)
    except DecodeError as e:
        return e.kind, e.detail, b"", "", "", 0, 0, None, True, 0
    except Exception as e:  # noqa: BLE001 - a scan reports every bad file and never stops on one
        return (
            "unreadable",
            f"cannot decode ({type(e).__name__}: {str(e)[:120]})",
            b"",
            "",
            "",
            0,
            0,
            None,
            True,
            0,
        )
    fmt, mode = info.format or "", info.mode
    try:
        digest = bytes.fromhex(sha256_file(path))
    except OSError as e:
        return (
            "unreadable",
            f"cannot read file ({e.strerror or e})",
            b"",
            fmt,
            mode,
            info.width,
            info.height,
            None,
            True,
            0,
        )
    if min(info.width, info.height) < MIN_SIDE:
        detail = f"{info.width}x{info.height} pixels; each side must be at least {MIN_SIDE}"
        return "too_small", detail, digest, fmt, mode, info.width, info.height, None, True, 0
    block[k] = pixels
    return (
        None,
        "",
        digest,
        fmt,
        mode,
        info.width,
        info.height,
        info.conversion,
        info.extension_ok,
        dhash(pixels),
    )
