"""Micro-batching: requests that arrive within a few milliseconds are predicted together, in turns.

Each request hands its decoded images to :meth:`MicroBatcher.predict` and awaits its rows.
One worker task takes the waiting requests, gathers more for up to ``max_wait_ms`` (or until
``max_batch`` images wait), and runs one forward pass of at most ``max_batch`` images on a
single prediction thread, so the model never runs two batches at once and the event loop stays
free. Each batch is filled in turns (:func:`take_turns`): every waiting request gives an equal
share, so a one-image request rides in the next batch instead of queueing behind another's 64.
With ``max_wait_ms=0`` nothing waits, but the requests that queued while the model was busy
still go through together; ``max_batch=1`` turns batching off.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Job:
    pixels: np.ndarray  # uint8 (n, H, W, 3)
    future: asyncio.Future
    taken: int = 0  # rows handed to batches so far
    rows: list[np.ndarray] = field(default_factory=list)  # their probabilities, in order
    queued: float = field(default_factory=time.perf_counter)

    @property
    def left(self) -> int:
        return len(self.pixels) - self.taken


class MicroBatcher:
    """Gather concurrent requests into batches for ``predict_fn``.

    Args:
        predict_fn: uint8 pixels ``(N, H, W, 3)`` -> probabilities ``(N, K)``; runs on one
            background thread.
        max_batch: most images in one forward pass (a larger request is split over several).
        max_wait_ms: how long the first request of a batch waits for company.
        on_batch: called with each batch's image count (for the batch-size metric).
    """

    def __init__(
        self,
        predict_fn: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.predict_fn = predict_fn
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000
        self.on_batch = on_batch or (lambda n: None)
        self.queue: asyncio.Queue[_Job] | None = None
        self.worker: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgcls-predict")

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for ``pixels``, predicted in a batch with whatever else is waiting."""
        job = _Job(pixels, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        waiting: deque[_Job] = deque()
        while True:
            if not waiting:
                waiting.append(await self.queue.get())
                await self._wait_for_company(loop, waiting)
            while not self.queue.empty():  # whatever queued while the model ran
                waiting.append(self.queue.get_nowait())
            await self._predict(loop, take_turns(waiting, self.max_batch))

    async def _wait_for_company(self, loop: asyncio.AbstractEventLoop, waiting: deque) -> None:
        deadline = loop.time() + self.max_wait_s
        while sum(j.left for j in waiting) < self.max_batch:
            timeout = deadline - loop.time()
            if timeout <= 0:
                return
            try:
                waiting.append(await asyncio.wait_for(self.queue.get(), timeout))
            except asyncio.TimeoutError:
                return

    async def _predict(self, loop: asyncio.AbstractEventLoop, parts: list[tuple]) -> None:
        if not parts:
            return
        pixels = np.concatenate([job.pixels[a:b] for job, a, b in parts])
        self.on_batch(len(pixels))
        try:
            probs = await loop.run_in_executor(self.executor, self.predict_fn, pixels)
        except Exception as e:  # noqa: BLE001 - every waiting request learns of the failure
            for job, _, _ in parts:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        start = 0
        for job, a, b in parts:
            job.rows.append(probs[start : start + b - a])
            start += b - a
            complete = sum(map(len, job.rows)) == len(job.pixels)
            if complete and not job.future.done():
                job.future.set_result(np.concatenate(job.rows))


def take_turns(waiting: deque[_Job], room: int) -> list[tuple[_Job, int, int]]:
    """Up to ``room`` images from the ``waiting`` requests as ``(job, start, stop)`` slices:
    each request in turn gives an equal share of what is left of the room (at least one image),
    round after round; a request with images left goes to the back of the line. A request
    nobody waits for any more (timed out, failed) is dropped."""
    parts = []
    while room and waiting:
        share = max(1, room // len(waiting))
        for _ in range(len(waiting)):
            if not room:
                break
            job = waiting.popleft()
            if job.future.done():
                continue
            n = min(share, job.left, room)
            parts.append((job, job.taken, job.taken + n))
            job.taken += n
            room -= n
            if job.left:
                waiting.append(job)
    return parts
