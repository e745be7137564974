"""The settings of a search (``tune.json``'s ``settings``) and reading them back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgcls.config import check_minutes, check_positive_int, check_splits
from imgcls.errors import ImgclsError, check

ALGORITHMS = ("bayesian", "hyperband", "random")
FINALS = ("retrain", "keep")


@dataclass
class TuneSettings:
    """What a search was asked to do; stored in ``tune.json`` so ``--resume`` repeats it."""

    data: str
    model: str | None = None
    algorithm: str = "bayesian"
    trials: int = 10
    max_time: float | None = None  # minutes for the trials (the final run comes on top)
    space: str | None = None
    seed: int = 0
    final: str = "retrain"
    val_split: float = 0.1
    test_split: float = 0.1
    precision: str | None = None
    backend: str | None = None

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
        check_splits(self.val_split, self.test_split)
        check(
            self.val_split > 0,
            "`val_split` must be above 0: the search scores trials on the validation split",
        )
        return self


def read_record(folder: Path) -> dict[str, Any]:
    """The record (`tune.json`) of the search in ``folder``, checked to be one."""
    path = folder / "tune.json"
    check(path.is_file(), f"--resume {folder}: not a tuning run (no {path.name})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ImgclsError(f"--resume {folder}: {path.name} is unreadable ({e})") from None
    check(
        isinstance(record, dict) and record.get("kind") == "imgcls-tune" and "settings" in record,
        f"--resume {folder}: {path.name} is not an imgcls tuning record",
    )
    return record
