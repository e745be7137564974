"""The trainer's duties as Keras callbacks around the pure rules of :mod:`.state` and
:mod:`.setup`: the learning-rate plan, the stopping rule, checkpoints, the history, progress.

They share the run's :class:`~.state.TrainState` and :class:`Clock` and act in list order
(:func:`phase_callbacks`): after each step :class:`Stopping` advances the step counters and
may stop the run, then :class:`Checkpointing` saves on its cadence; at an epoch's end
:class:`EpochLog` writes the history row and advances the epoch, :class:`Stopping` applies
early stopping, :class:`Checkpointing` saves (marking the best epoch). An epoch cut short
mid-way (``state.stopped`` already set) gets a checkpoint and no history row.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import keras

from imgcls.errors import ImgclsError
from imgcls.io import write_csv
from imgcls.train.state import Clock, StopRule, TrainState

PROGRESS_INTERVAL_S = 0.5  # seconds between progress-bar redraws on a terminal


def sync_variables(model) -> None:
    """Make the Keras variables current mid-epoch. JAX's fit keeps the training state in its
    own arrays and reads the variables again only after a sync: without one, a new learning
    rate would be ignored and a mid-epoch checkpoint would hold stale weights."""
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


class _RunCallback(keras.callbacks.Callback):
    """A callback over the run's state, its phase (``setup``: a :class:`~.setup.PhaseSetup`),
    steps per epoch and clock."""

    def __init__(self, state: TrainState, setup: Any, steps: int, clock: Clock):
        super().__init__()
        self.state, self.setup, self.steps, self.clock = state, setup, steps, clock


class EpochLog(_RunCallback):
    """One history row per finished epoch (metrics, learning rate, seconds, data wait) into
    ``state.history`` and ``history.csv`` (``path``; ``None`` on the other processes of a
    data-parallel job); advances ``state`` to the next epoch.

    It also times the gap between one step's end and the next one's start: on JAX and PyTorch
    that is the host waiting for the next batch (TensorFlow fetches inside its step, from a
    prefetched ``tf.data`` pipeline). The row's ``data_wait`` is that gap's share of the epoch.
    """

    def __init__(self, state, setup, steps, clock, path):
        super().__init__(state, setup, steps, clock)
        self.path = path
        self.wait_s = self.step_s = self.last_begin = 0.0
        self.last_end: float | None = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.wait_s = self.step_s = 0.0
        self.last_end = None

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        now = time.perf_counter()
        if self.last_end is not None:
            self.wait_s += now - self.last_end
        self.last_begin = now

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.last_end = time.perf_counter()
        self.step_s += self.last_end - self.last_begin

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        state = self.state
        state.elapsed_s = self.clock()
        if state.stopped:  # cut short mid-epoch: no row
            return
        row = {
            "epoch": state.epoch + 1,
            **{k: float(v) for k, v in (logs or {}).items()},
            "lr": float(self.setup.optimizer.learning_rate),
            "elapsed_s": round(state.elapsed_s, 2),
            "data_wait": round(self.wait_s / max(self.wait_s + self.step_s, 1e-9), 4),
        }
        state.history.append(row)
        state.epoch += 1
        state.step_in_epoch = 0
        state.global_step = state.epoch * self.steps
        if self.path is not None:
            keys = list(dict.fromkeys(k for r in state.history for k in r))
            write_csv(self.path, keys, [[r.get(k, "") for k in keys] for r in state.history])


class LearningRate(_RunCallback):
    """Sets each step's learning rate (and a lookahead's ``progress``) from the phase's
    :class:`~.setup.LrPlan` at the step and, under a time budget, the clock."""

    def __init__(self, state, setup, steps, clock, rule: StopRule):
        super().__init__(state, setup, steps, clock)
        self.rule = rule

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        setup, state = self.setup, self.state
        used = self.rule.time_used(state, setup.phase, self.clock())
        step = state.global_step - setup.phase.start * self.steps
        sync_variables(self.model)
        setup.optimizer.learning_rate = setup.plan(step, used)
        if hasattr(setup.optimizer, "progress"):  # lookahead averages harder as lr decays
            setup.optimizer.progress.assign(setup.plan.progress(step, used))


class Stopping(_RunCallback):
    """The :class:`~.state.StopRule` after every step (a NaN loss raises, a spent budget stops
    the run mid-epoch) and every epoch (early stopping, budgets); it advances the step counters.

    ``nan_hint`` is where the last good checkpoint is and the learning rate, for the NaN error.
    """

    def __init__(self, state, setup, steps, clock, rule: StopRule, nan_hint: tuple[str, float]):
        super().__init__(state, setup, steps, clock)
        self.rule, self.nan_hint = rule, nan_hint

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        state = self.state
        state.step_in_epoch += 1
        state.global_step = state.epoch * self.steps + state.step_in_epoch
        loss = float(logs["loss"]) if logs and "loss" in logs else None
        reason = self.rule.after_step(state, self.setup.phase, loss, self.clock())
        if reason == "nan":
            where, lr = self.nan_hint
            raise ImgclsError(
                f"loss became NaN at epoch {state.epoch + 1}, step {state.step_in_epoch}; the "
                f"last good checkpoint is in {where}. Start a new run with a lower --lr (now {lr})"
            )
        if reason is not None and state.step_in_epoch < self.steps:
            state.stopped = reason
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        state = self.state
        if state.step_in_epoch:  # cut short mid-epoch: the epoch did not finish
            return
        monitored = state.history[-1].get("val_loss", state.history[-1]["loss"])
        self.rule.after_epoch(state, self.setup.phase, monitored, state.elapsed_s)


class Checkpointing(_RunCallback):
    """Saves the whole state (``save(state, best)``) every ``every`` steps and at every
    epoch's end (marking an epoch that improved the monitored loss as the best), and when the
    run stops mid-epoch."""

    def __init__(self, state, setup, steps, clock, save: Callable, every: int | None):
        super().__init__(state, setup, steps, clock)
        self.save, self.every = save, every

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        state = self.state
        if state.stopped or not self.every or state.step_in_epoch >= self.steps:
            return
        if state.global_step % self.every == 0:
            state.elapsed_s = self.clock()
            sync_variables(self.model)
            self.save(state, False)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        state = self.state  # fit has synced the variables by now
        improved = state.step_in_epoch == 0 and state.best_epoch == state.epoch
        self.save(state, improved)


class Progress(_RunCallback):
    """One progress line per epoch: bar, step, ETA, images per second, running loss/accuracy.

    On a terminal the line is redrawn in place; in a log file only the epoch summary appears.
    """

    def __init__(self, state, setup, steps, clock, epochs: int, batch: int, stream=None):
        super().__init__(state, setup, steps, clock)
        self.epochs, self.batch_size = epochs, batch
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.first_step = 0
        self.t0 = self.t_last = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.first_step = self.state.step_in_epoch
        self.t0 = self.t_last = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        now = time.perf_counter()
        if not self.tty or now - self.t_last < PROGRESS_INTERVAL_S:
            return
        self.t_last = now
        done = self.state.step_in_epoch
        rate = (done - self.first_step) / max(now - self.t0, 1e-9)  # steps per second
        eta = (self.steps - done) / max(rate, 1e-9)
        bar = "=" * int(24 * done / self.steps)
        self.stream.write(
            f"\repoch {self.state.epoch + 1}/{self.epochs} [{bar:<24}] {done}/{self.steps} "
            f"ETA {clock(eta)} {rate * self.batch_size:,.0f} img/s {_fmt(logs)}\x1b[K"
        )
        self.stream.flush()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.state.step_in_epoch:  # cut short mid-epoch
            return
        seconds = time.perf_counter() - self.t0
        images = self.steps * self.batch_size
        line = (
            f"epoch {self.state.epoch}/{self.epochs} {clock(seconds)} "
            f"{images / max(seconds, 1e-9):,.0f} img/s {_fmt(self.state.history[-1])}"
        )
        self.stream.write(f"\r{line}\x1b[K\n" if self.tty else f"{line}\n")
        self.stream.flush()


def _fmt(logs) -> str:
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    return " ".join(
        f"{k} {float(logs[k]):.4f}"
        for k in keys
        if logs and k in logs and not math.isnan(float(logs[k]))
    )


def clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) for a number of seconds."""
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 60}:{seconds % 60:02d}"
        if seconds < 3600
        else f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    )
