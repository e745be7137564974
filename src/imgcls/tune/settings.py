"""The settings of a search (``tune.json``'s ``settings``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imgcls.config import (
    BACKENDS,
    PRECISIONS,
    SplitSettings,
    check_minutes,
    check_positive_int,
)
from imgcls.errors import check

ALGORITHMS = ("bayesian", "hyperband", "random")
FINALS = ("retrain", "keep")


def _setting(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(kw_only=True)
class TuneSettings(SplitSettings):
    """What a search was asked to do; stored in ``tune.json`` so ``--resume`` repeats it. The
    ``imgcls tune`` flags are generated from these fields."""

    data: str = field(metadata={"cli": False})  # DATA, the positional argument
    model: str | None = _setting(None, "registered model (default: as `imgcls train` picks)")
    algorithm: str = _setting("bayesian", "KerasTuner oracle", choices=ALGORITHMS)
    trials: int = _setting(10, "trials to run")
    max_time: float | None = _setting(
        None, "minutes for the trials (the final run comes on top)", metavar="MIN"
    )
    space: str | None = _setting(
        None, "JSON/TOML ranges narrowing the model's space", metavar="FILE"
    )
    final: str = _setting(
        "retrain", "retrain the best settings on train+val, or keep the best trial", choices=FINALS
    )
    precision: str | None = _setting(None, "numeric precision of every trial", choices=PRECISIONS)
    backend: str | None = _setting(None, "Keras backend of every trial", choices=BACKENDS)

    def validate(self) -> TuneSettings:
        check(
            self.algorithm in ALGORITHMS,
            f"`algorithm` must be one of {list(ALGORITHMS)}. Received: {self.algorithm!r}",
        )
        check_positive_int("trials", self.trials)
        check_minutes("max_time", self.max_time, allow_none=True)
        check(
            self.final in FINALS, f"`final` must be one of {list(FINALS)}. Received: {self.final!r}"
        )
        self.validate_split()
        check(
            self.val_split > 0,
            "`val_split` must be above 0: the search scores trials on the validation split",
        )
        return self
