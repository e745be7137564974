"""Keras callbacks used by the trainer: a progress bar and mid-epoch checkpoints."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import keras

PROGRESS_INTERVAL_S = 0.5  # seconds between progress-bar redraws on a terminal


class Progress(keras.callbacks.Callback):
    """One progress line per epoch: bar, step, ETA, images per second, running loss/accuracy.

    On a terminal the line is redrawn in place; in a log file only the epoch summary appears.
    """

    def __init__(self, epochs: int, steps: int, batch_size: int, stream=None, enabled: bool = True):
        super().__init__()
        self.epochs, self.steps, self.batch_size = epochs, steps, batch_size
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.enabled = enabled
        self.epoch = 0
        self.first_step = 0

    def begin(self, epoch: int, first_step: int) -> None:
        self.epoch, self.first_step = epoch, first_step
        self.t0 = self.t_last = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        now = time.perf_counter()
        if not self.enabled or not self.tty or now - self.t_last < PROGRESS_INTERVAL_S:
            return
        self.t_last = now
        done = self.first_step + batch + 1
        rate = (batch + 1) / max(now - self.t0, 1e-9)  # steps per second this session
        eta = (self.steps - done) / rate
        bar = "=" * int(24 * done / self.steps)
        self.stream.write(
            f"\repoch {self.epoch + 1}/{self.epochs} [{bar:<24}] {done}/{self.steps} "
            f"ETA {clock(eta)} {rate * self.batch_size:,.0f} img/s {_fmt(logs)}\x1b[K"
        )
        self.stream.flush()

    def end(self, row: dict[str, float], images: int) -> None:
        seconds = time.perf_counter() - self.t0
        if not self.enabled:
            return
        line = (
            f"epoch {self.epoch + 1}/{self.epochs} {clock(seconds)} "
            f"{images / max(seconds, 1e-9):,.0f} img/s {_fmt(row)}"
        )
        self.stream.write(f"\r{line}\x1b[K\n" if self.tty else f"{line}\n")
        self.stream.flush()


class StepHook(keras.callbacks.Callback):
    """Calls ``before(step_in_epoch)`` before every batch (the learning rate) and
    ``fn(step_in_epoch, logs)`` after it (checkpoints, NaN checks, time budget).

    It also times the gap between one step's end and the next one's start: on JAX and PyTorch
    that is the host waiting for the next batch (TensorFlow fetches inside its step, from a
    prefetched ``tf.data`` pipeline). :attr:`data_wait_share` is that gap's share of the epoch.
    """

    def __init__(
        self, fn: Callable[[int, dict], None], before: Callable[[int], None] | None = None
    ):
        super().__init__()
        self.fn, self.before = fn, before
        self.first_step = 0
        self.wait_s = self.step_s = 0.0
        self.last_end: float | None = None
        self.last_begin = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.wait_s = self.step_s = 0.0
        self.last_end = None

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        now = time.perf_counter()
        if self.last_end is not None:
            self.wait_s += now - self.last_end
        self.last_begin = now
        if self.before is not None:
            self.before(self.first_step + batch)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.fn(self.first_step + batch + 1, logs or {})
        self.last_end = time.perf_counter()
        self.step_s += self.last_end - self.last_begin

    @property
    def data_wait_share(self) -> float:
        """Share of this epoch's step time spent between steps (waiting for data)."""
        return self.wait_s / max(self.wait_s + self.step_s, 1e-9)


def _fmt(logs) -> str:
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    return " ".join(
        f"{k} {float(logs[k]):.4f}"
        for k in keys
        if logs and k in logs and not math.isnan(float(logs[k]))
    )


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 60}:{seconds % 60:02d}"
        if seconds < 3600
        else f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    )
