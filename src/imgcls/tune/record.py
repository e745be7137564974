"""A search's record, ``DIR/tune.json``: typed here, plain JSON on disk (written after every
change, so a killed search resumes from it)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.errors import ImgclsError, check
from imgcls.io import write_json

KIND = "imgcls-tune"
RECORD_FILE = "tune.json"


@dataclass
class BestTrial:
    """The trial with the best validation accuracy (numbered as in ``trials.csv``)."""

    trial: int
    val_accuracy: float
    values: dict[str, Any]
    epochs_run: int


@dataclass
class TestRead:
    """The one read of the test split: how often and when it was read, and what it gave."""

    reads: int = 0
    at: str | None = None
    accuracy: float | None = None
    n_images: int | None = None
    ci95: list[float] | None = None
    metrics: str | None = None  # path of best/evaluation/metrics.json


@dataclass
class WorkerInfo:
    """Set in a worker's own folder: the chief it takes trials from, and its name."""

    chief: str
    id: str


@dataclass
class TuneRecord:
    """What ``tune.json`` holds.

    Attributes:
        settings: the search's :class:`~imgcls.tune.TuneSettings` as a dict (model resolved).
        started_at: when the search began (UTC, ISO 8601).
        space: each searched parameter described in words.
        defaults: the first trial's values: the recipe's own, as ``imgcls train`` resolves them.
        best: the best trial once the search ended.
        test: the one read of the test split.
        final_done: ``best/`` is trained.
        elapsed_s: seconds of searching so far (a resumed search adds up).
        chief: the address a chief serves its oracle on.
        worker: in a worker's folder, whose trials it runs.
        search_process_peak_rss_mb: the searching process's peak memory (it holds no model).
    """

    settings: dict[str, Any]
    started_at: str
    space: dict[str, str]
    defaults: dict[str, Any]
    best: BestTrial | None = None
    test: TestRead = field(default_factory=TestRead)
    final_done: bool = False
    elapsed_s: float = 0.0
    chief: str | None = None
    worker: WorkerInfo | None = None
    search_process_peak_rss_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``tune.json`` (fields never set are left out)."""
        d = {"kind": KIND, **dataclasses.asdict(self)}
        d["test"] = {k: v for k, v in d["test"].items() if v is not None}
        return {k: v for k, v in d.items() if v is not None or k == "best"}

    def save(self, folder: Path) -> None:
        write_json(Path(folder) / RECORD_FILE, self.to_dict())

    @classmethod
    def read(cls, folder: Path) -> TuneRecord:
        """The record of the search in ``folder``; one line if it is not one."""
        path = Path(folder) / RECORD_FILE
        check(path.is_file(), f"--resume {folder}: not a tuning run (no {path.name})")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ImgclsError(f"--resume {folder}: {path.name} is unreadable ({e})") from None
        check(
            isinstance(d, dict) and d.get("kind") == KIND and "settings" in d,
            f"--resume {folder}: {path.name} is not an imgcls tuning record",
        )
        try:
            return cls.from_dict(d)
        except (TypeError, KeyError) as e:
            raise ImgclsError(f"--resume {folder}: {path.name} is damaged ({e})") from None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TuneRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        if values.get("best") is not None:
            values["best"] = BestTrial(**values["best"])
        values["test"] = TestRead(**values.get("test", {}))
        if values.get("worker") is not None:
            values["worker"] = WorkerInfo(**values["worker"])
        return cls(**values)
