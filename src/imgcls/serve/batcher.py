"""Micro-batching: requests that arrive within a few milliseconds are predicted together.

Each request hands its decoded images to :meth:`MicroBatcher.predict` and awaits its rows.
One worker task takes the first waiting request, then gathers more for up to ``max_wait_ms``
(or until ``max_batch`` images), and runs one forward pass for all of them on a single
prediction thread, so the model never runs two batches at once and the event loop stays free.
With ``max_wait_ms=0`` nothing waits, but the requests that queued while the model was busy
still go through together; ``max_batch=1`` turns batching off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Job:
    pixels: np.ndarray  # uint8 (n, H, W, 3)
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Gather concurrent requests into batches for ``predict_fn``.

    Args:
        predict_fn: uint8 pixels ``(N, H, W, 3)`` -> probabilities ``(N, K)``; runs on one
            background thread.
        max_batch: most images in one forward pass (a larger request still goes alone).
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
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].pixels)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    job = (
                        self.queue.get_nowait()
                        if timeout <= 0
                        else await asyncio.wait_for(self.queue.get(), timeout)
                    )
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if size + len(job.pixels) > self.max_batch:
                    await self._predict(loop, jobs)  # it would overflow: run it in the next batch
                    jobs, size = [job], len(job.pixels)
                    deadline = loop.time() + self.max_wait_s
                    continue
                jobs.append(job)
                size += len(job.pixels)
            await self._predict(loop, jobs)

    async def _predict(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        live = [j for j in jobs if not j.future.done()]  # a timed-out request no longer waits
        if not live:
            return
        pixels = np.concatenate([j.pixels for j in live])
        self.on_batch(len(pixels))
        try:
            probs = await loop.run_in_executor(self.executor, self.predict_fn, pixels)
        except Exception as e:  # noqa: BLE001 - every waiting request learns of the failure
            for j in live:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        start = 0
        for j in live:
            n = len(j.pixels)
            if not j.future.done():
                j.future.set_result(probs[start : start + n])
            start += n
