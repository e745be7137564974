"""What a training run carries across steps, epochs and crashes: typed, and checkpointed.

:class:`TrainState` is the trainer's whole mutable state; every checkpoint stores it as JSON
beside the variables. :class:`Phase` is one stretch of epochs with its own optimizer (training
from scratch is one phase; transfer learning is a head phase on cached features, then an
optional fine-tuning phase). :class:`StopRule` is the one place that decides when a run stops:
a NaN loss, ``--max-time``, a phase's time budget, or early stopping.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

from imgcls.errors import ImgclsError

STOP_REASONS = ("completed", "early_stopping", "max_time", "finetune_time")
# Phase names checkpoints written before imgcls had a head phase on cached features used.
_OLD_PHASES = {"frozen": "head"}


@dataclass
class TrainState:
    """Where a run is; a pure function of the steps taken (and, under a time budget, the clock).

    Attributes:
        epoch: epochs finished.
        step_in_epoch: steps finished in the current epoch.
        global_step: steps finished in all.
        best: lowest monitored loss (``val_loss``, else ``loss``) at an epoch's end.
        best_epoch: the epoch (1-based) that reached ``best``.
        bad_epochs: epochs since ``best`` improved (early stopping counts these).
        history: one row of metrics per finished epoch.
        elapsed_s: seconds of training so far (resumed runs add up).
        stopped: why the run stopped, one of :data:`STOP_REASONS` but ``completed``.
        phase: the name of the phase the last step belonged to.
        phase_started_s: ``elapsed_s`` when that phase began (its time budget counts from it).
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed_s: float = 0.0
    stopped: str | None = None
    phase: str | None = None
    phase_started_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "checkpoint") -> TrainState:
        """Read a checkpoint's state, from this version or an older one (dict keys then)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["phase"] = _OLD_PHASES.get(values.get("phase"), values.get("phase"))
        try:
            state = cls(**values)
        except TypeError as e:
            raise ImgclsError(
                f"{where} holds a trainer state this imgcls cannot read: {e}"
            ) from None
        if not isinstance(state.epoch, int) or not isinstance(state.history, list):
            raise ImgclsError(f"{where} holds a damaged trainer state (epoch={state.epoch!r})")
        return state


@dataclass(frozen=True)
class Phase:
    """Epochs ``start`` to ``end - 1`` trained with one optimizer at peak rate ``lr``.

    ``name`` is ``"train"`` (the whole model on pixels), ``"head"`` (the head alone on features
    of a frozen backbone) or ``"finetune"`` (the head and the top of the backbone on pixels).
    ``budget_s`` caps the phase's wall time; its learning rate decays by that clock.
    """

    name: str
    start: int
    end: int
    lr: float
    budget_s: float | None = None

    @property
    def epochs(self) -> int:
        return self.end - self.start


def plan_phases(config, pretrained: bool, recipe) -> list[Phase]:
    """The phases of a run of a resolved ``config``: one ``train`` phase, or for a pretrained
    backbone a ``head`` phase and, with ``finetune_epochs``, a ``finetune`` phase at
    ``lr * finetune_lr_factor`` within ``finetune_time`` minutes."""
    epochs, lr = config.epochs, config.lr
    if not pretrained:
        return [Phase("train", 0, epochs, lr)]
    tune = min(config.finetune_epochs or 0, epochs)
    phases = [Phase("head", 0, epochs - tune, lr)] if tune < epochs else []
    if tune:
        budget = config.finetune_time * 60 if config.finetune_time else None
        factor = recipe.finetune_lr_factor
        phases.append(Phase("finetune", epochs - tune, epochs, lr * factor, budget))
    return phases


@dataclass
class StopRule:
    """When a run stops: the one rule for NaN, time budgets and early stopping.

    Args:
        epochs: epochs the run plans in all; after the last nothing needs stopping.
        patience: epochs without improvement of the monitored loss before stopping.
        max_time_s: the run's training budget in seconds (``--max-time``).
    """

    epochs: int
    patience: int | None = None
    max_time_s: float | None = None

    def time_used(self, state: TrainState, phase: Phase, elapsed_s: float) -> float:
        """Share (0 to 1) of the tightest budget that binds the current phase, 0 without one.

        The run's budget counts what is left of it from the phase's start, so each phase's
        learning rate reaches zero by the deadline."""
        used = 0.0
        in_phase = elapsed_s - state.phase_started_s
        if self.max_time_s:
            used = in_phase / max(self.max_time_s - state.phase_started_s, 1e-9)
        if phase.budget_s:
            used = max(used, in_phase / phase.budget_s)
        return used

    def after_step(
        self, state: TrainState, phase: Phase, loss: float | None, elapsed_s: float
    ) -> str | None:
        """``"nan"`` for a non-finite loss, else the budget that ran out, else ``None``."""
        if loss is not None and not math.isfinite(loss):
            return "nan"
        return self._out_of_time(state, phase, elapsed_s)

    def after_epoch(
        self, state: TrainState, phase: Phase, monitored: float, elapsed_s: float
    ) -> bool:
        """Record a finished epoch's monitored loss (``state.epoch`` already counts it); set
        ``state.stopped`` if the run should stop early. Returns whether the epoch improved."""
        improved = state.best is None or monitored < state.best
        if improved:
            state.best, state.best_epoch, state.bad_epochs = monitored, state.epoch, 0
        else:
            state.bad_epochs += 1
        if state.epoch >= self.epochs:
            return improved  # the last epoch: the run completes
        if self.patience and state.bad_epochs >= self.patience:
            state.stopped = "early_stopping"
        elif (reason := self._out_of_time(state, phase, elapsed_s)) is not None:
            state.stopped = reason
        return improved

    def _out_of_time(self, state: TrainState, phase: Phase, elapsed_s: float) -> str | None:
        if self.max_time_s and elapsed_s > self.max_time_s:
            return "max_time"
        if phase.budget_s and elapsed_s - state.phase_started_s > phase.budget_s:
            return "finetune_time"
        return None


class Clock:
    """Seconds of training so far (a resumed run starts from what it had). In a data-parallel
    job with a time budget (``agreed``), process 0's: one small broadcast per reading, so every
    process stops at the same step."""

    def __init__(self, agreed: bool = False):
        self.agreed = agreed
        self.t_start = time.perf_counter()

    def start(self, already_s: float) -> None:
        self.t_start = time.perf_counter() - already_s

    def __call__(self) -> float:
        seconds = time.perf_counter() - self.t_start
        if not self.agreed:
            return seconds
        from imgcls import backend

        return backend.agreed(seconds)
