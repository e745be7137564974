"""Decoding uploads within a budget, on a bounded pool, taking turns between requests.

Decoding is where a request's cost lives: a 115 KB PNG of 6000x6600 takes 0.5 s of a core and
120 MB to decode, the model then needs 0.1 ms for its 32x32 thumbnail. So the server

- measures every upload from its header first (nothing decoded) and lets :class:`Service`
  refuse a request whose images add up to more than ``max_request_pixels``;
- decodes on its own pool of ``workers`` threads (one per core by default; Pillow releases the
  GIL while it decodes), never on asyncio's shared default pool, and on the event loop only a
  request of thumbnails that takes less than the hops to a thread would;
- lets each request have at most ``workers`` images in the pool at once: when one of a
  64-image request's decodes ends, its next one queues *behind* whatever other requests
  submitted meanwhile, so a one-image request waits for at most one decode, not 64;
- hands freed memory back to the operating system after a heavy request (glibc keeps the
  arenas of freed multi-megabyte buffers otherwise: 1.0 GB became 2.9 GB and stayed there).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# A request this small (e.g. 64 thumbnails of 32x32: both bounds) is read and decoded on the
# event loop, in under a millisecond: less than the thread hops it saves, which had cut the
# throughput at 64 clients below that at 8 (bench/serve_load.py). Bytes bound the header parse,
# pixels the decode (a 115 KB PNG can hold 40 MP).
INLINE_BYTES = 256 * 1024
INLINE_PIXELS = 65_536
# A request that decoded more than this many pixels returns its freed memory to the OS once
# no request is decoding (malloc_trim takes ~1 ms; below this the arenas are small anyway).
TRIM_AFTER_PIXELS = 8_000_000


class DecodePool:
    """Decode uploads to ``image_size`` RGB uint8 on ``workers`` threads, requests in turn.

    Args:
        image_size: ``(height, width)`` every image is resized to.
        max_pixels: width x height above which an image is refused from its header.
        workers: decoding threads; ``0`` means one per CPU core.
    """

    def __init__(self, image_size: tuple[int, int], max_pixels: int, workers: int = 0):
        self.image_size, self.max_pixels = image_size, max_pixels
        self.workers = workers or os.cpu_count() or 1
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="imgcls-decode")
        self.decoding = 0  # requests between their first and last decode

    async def pixels(self, uploads: list[bytes]) -> list[int]:
        """Width x height of each upload from its header (0 for one that will be refused
        anyway: not an image, or over ``max_pixels``)."""
        if sum(map(len, uploads)) <= INLINE_BYTES:
            return self._header_pixels(uploads)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._header_pixels, uploads)

    async def decode(self, uploads: list[bytes], pixels: int = 0) -> list[tuple]:
        """``(pixels, None)`` or ``(None, "kind: detail")`` for each upload, in order;
        ``pixels`` is the request's total from :meth:`pixels` (to decide on trimming)."""
        if pixels <= INLINE_PIXELS and sum(map(len, uploads)) <= INLINE_BYTES:
            return [self._decode(data) for data in uploads]
        loop = asyncio.get_running_loop()
        turn = asyncio.Semaphore(self.workers)

        async def one(data: bytes) -> tuple:
            async with turn:
                return await loop.run_in_executor(self.executor, self._decode, data)

        self.decoding += 1
        try:
            return await asyncio.gather(*(one(data) for data in uploads))
        finally:
            self.decoding -= 1
            if pixels >= TRIM_AFTER_PIXELS and self.decoding == 0:
                loop.run_in_executor(self.executor, release_memory)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _decode(self, data: bytes) -> tuple[np.ndarray | None, str | None]:
        from imgcls.data.decode import DecodeError, load_image

        try:
            return load_image(data, self.image_size, self.max_pixels), None
        except DecodeError as e:
            return None, f"{e.kind}: {e.detail}"

    def _header_pixels(self, uploads: list[bytes]) -> list[int]:
        from PIL import Image

        sizes = []
        for data in uploads:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with Image.open(io.BytesIO(data)) as img:  # reads the header only
                        n = img.width * img.height
            except Exception:  # noqa: BLE001 - not an image: its decode reports why
                n = 0
            sizes.append(n if n <= self.max_pixels else 0)
        return sizes


def release_memory() -> None:
    """Return freed heap pages to the OS (glibc's ``malloc_trim``; nothing elsewhere)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()
