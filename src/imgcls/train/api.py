"""``imgcls.train(DATA, out=RUN)``: read the data, resolve the config, train, write the run.

``train`` reads and splits the data, resolves the config against it (:mod:`.rundata`),
decodes every image once and hands everything to :class:`~.trainer._Trainer`, which trains
phase by phase with checkpoints. ``train(resume=True, out=RUN)`` continues a run exactly
where a crash left off.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.bundle import RunFolder, read_meta
from imgcls.config import TrainConfig
from imgcls.errors import ImgclsError, check
from imgcls.models import get_spec
from imgcls.train.checkpoint import CheckpointManager, RunLock
from imgcls.train.rundata import load_run_data, write_run_files
from imgcls.train.setup import check_init_from

RESUME_SAFE_KEYS = {"max_time", "checkpoint_every", "keep_checkpoints"}  # change nothing computed


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    history: list[dict[str, float]]
    stopped: str  # one of imgcls.train.state.STOP_REASONS
    test_metrics: dict[str, Any] | None = None
    left_out: list[dict] = field(default_factory=list)


def train(
    data: str | Path | None = None,
    out: str | Path = "runs/latest",
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    verbose: bool = True,
    **overrides: Any,
) -> TrainResult:
    """Train a model on DATA and write the run folder ``out``.

    Args:
        data: a folder per class, a CSV manifest, a prepared folder or a built-in name. With
            ``resume`` it may be left out: the run remembers its data.
        out: the run folder (model bundle, split.csv, history.csv, checkpoints).
        config: a :class:`TrainConfig`; ``overrides`` replace its fields (``epochs=3``).
        resume: continue the run in ``out`` from its newest good checkpoint.
        verbose: print progress and results to stderr.

    Returns:
        A :class:`TrainResult`.

    Example:
        >>> result = imgcls.train("digits", out="runs/digits", epochs=5)   # doctest: +SKIP
        >>> result.test_metrics["accuracy"] > 0.9                         # doctest: +SKIP
        True
    """
    from imgcls import backend

    folder = RunFolder(Path(out))
    chief = backend.process_info()[0] == 0  # in a data-parallel job only process 0 writes
    if resume:
        config, data = _resume_config(folder, data, overrides)
    else:
        config = (config or TrainConfig()).updated(**overrides)
        check(data is not None, "DATA is required (a folder, a CSV manifest or a built-in name)")
        if config.model is not None:
            get_spec(config.model)  # an unknown name fails before any data is read
        taken = [p.name for p in (folder.run, folder.meta, folder.checkpoints) if p.exists()]
        if taken and chief:
            raise ImgclsError(
                f"--out {out} already holds a run ({taken[0]}); pass --resume to continue it "
                "or choose another --out"
            )
    if config.init_from and not resume:
        read_meta(config.init_from)  # not a finished run: one line before any data is read
    backend.select(config.backend)  # refuses a backend other than the one Keras runs on
    import keras

    policy = keras.config.dtype_policy()
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose and chief else print_nothing
    try:
        with RunLock(folder.path) if chief else contextlib.nullcontext():
            if chief:
                CheckpointManager(folder.path).clean_temporaries()
            run_data, config = load_run_data(str(data), config, folder, resume, log)
            if config.init_from and not resume:
                check_init_from(config.init_from, config, run_data.class_names)
            record = write_run_files(folder, run_data, config, resume, write=chief)
            from imgcls.train.trainer import _Trainer

            return _Trainer(run_data, folder, config, record, resume, verbose and chief).run()
    finally:
        keras.config.set_dtype_policy(policy)  # the run's precision does not leak to the caller


def print_nothing(message: str) -> None:
    """The log of a quiet run (or of a data-parallel job's other processes)."""


def _resume_config(
    folder: RunFolder, data: Any, overrides: dict[str, Any]
) -> tuple[TrainConfig, str]:
    check(
        folder.run.is_file(), f"--resume: {folder.path} is not a run folder (no {folder.run.name})"
    )
    saved = json.loads(folder.run.read_text(encoding="utf-8"))
    config = TrainConfig.from_dict(saved["config"])
    from imgcls import backend

    running = backend.name()
    check(
        config.backend in (None, running),
        f"--resume: run {folder.path} was trained on the {config.backend} backend and Keras runs "
        f"on {running} here; resume with KERAS_BACKEND={config.backend} (or start a new run)",
    )
    for key, value in overrides.items():
        old = getattr(config, key, None)
        if value is None or value == old or (isinstance(old, tuple) and tuple(value) == old):
            continue
        check(
            key in RESUME_SAFE_KEYS,
            f"--resume: `{key}` differs from the run's ({value!r} vs {old!r}); "
            "resuming with a changed recipe is refused. Start a new run instead",
        )
    config = config.updated(**{k: v for k, v in overrides.items() if k in RESUME_SAFE_KEYS})
    return config, str(data) if data is not None else saved["data"]["argument"]
