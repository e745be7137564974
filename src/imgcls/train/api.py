"""Training a run folder end to end: read the data, resolve the config, train, write the bundle.

:func:`run_training` reads and splits the data, resolves the config against it
(:mod:`.rundata`), decodes every image once and hands everything to :class:`~.trainer.Trainer`,
which trains phase by phase with checkpoints and writes the bundle. ``resume=True`` continues a
run exactly where a crash left off. Scoring the test split through the bundle is the next
stage's work (:func:`imgcls.workflow.train` composes both).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from imgcls import backend
from imgcls.bundle import RunFolder, read_meta
from imgcls.config import TrainConfig
from imgcls.errors import ImgclsError, check
from imgcls.io import Timeline
from imgcls.models import get_spec
from imgcls.train.ahead import Ahead
from imgcls.train.checkpoint import CheckpointManager, RunLock
from imgcls.train.rundata import load_run_data, write_run_files
from imgcls.train.setup import check_init_from
from imgcls.train.trainer import TrainedRun, Trainer

RESUME_SAFE_KEYS = {"max_time", "checkpoint_every", "keep_checkpoints"}  # change nothing computed


def run_training(
    data: str | Path | None = None,
    out: str | Path = "runs/latest",
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    verbose: bool = True,
    timeline: Timeline | None = None,
    **overrides: Any,
) -> TrainedRun:
    """Train a model on DATA into the run folder ``out`` (see :func:`imgcls.train`, which
    also scores the test split).

    ``timeline`` gets the stages' times (start-up, data, model, features, epochs, bundle).

    Returns:
        A :class:`~.trainer.TrainedRun`.
    """
    timeline = timeline or Timeline()
    folder = RunFolder(Path(out))
    chief = backend.process_info()[0] == 0  # in a data-parallel job only process 0 writes
    if resume:
        config, data = _resume_config(folder, data, overrides)
    else:
        config = _new_config(folder, data, config, overrides, chief)
    backend.select(config.backend)  # refuses a backend other than the one Keras runs on
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose and chief else _quiet
    # The data stage reads in a child process while Keras imports here (a fresh process only)
    with Ahead(load_run_data, str(data), config, folder, resume, log) as data_ahead:
        backend.import_keras_quietly()
        import keras

        policy = keras.config.dtype_policy()
        timeline.mark("start-up")
        try:
            return _train(data_ahead, folder, config, resume, verbose, chief, log, timeline)
        finally:
            keras.config.set_dtype_policy(policy)  # the run's precision does not leak


def _train(data_ahead: Ahead, folder: RunFolder, config: TrainConfig, resume: bool,
           verbose: bool, chief: bool, log, timeline: Timeline) -> TrainedRun:  # fmt: skip
    """The run once Keras is imported: the data, the run's files, then :class:`Trainer`."""
    with RunLock(folder.path) if chief else contextlib.nullcontext():
        ckpt = CheckpointManager(folder.path)
        if chief:
            ckpt.clean_temporaries()
        run_data, config = data_ahead.result()
        if config.init_from and not resume:
            check_init_from(config.init_from, config, run_data.class_names)
        record = write_run_files(folder, run_data, config, resume, write=chief)
        found = ckpt.load_latest() if resume else None
        if resume and found is None:  # killed before the first checkpoint: start over
            log(f"no readable checkpoint in {ckpt.dir}; starting from the first step")
        timeline.mark("data")
        trainer = Trainer(run_data, folder, config, record, found, verbose and chief, timeline)
        return trainer.run()


def _quiet(message: str) -> None:
    """The log of a quiet run (or of a data-parallel job's other processes)."""


def _new_config(
    folder: RunFolder, data: Any, config: TrainConfig | None, overrides: dict, chief: bool
) -> TrainConfig:
    """The config of a new run, checked before any data is read."""
    config = (config or TrainConfig()).updated(**overrides)
    check(data is not None, "DATA is required (a folder, a CSV manifest or a built-in name)")
    if config.model is not None:
        get_spec(config.model)  # an unknown name fails before any data is read
    taken = [p.name for p in (folder.run, folder.meta, folder.checkpoints) if p.exists()]
    if taken and chief:
        raise ImgclsError(
            f"--out {folder.path} already holds a run ({taken[0]}); pass --resume to continue "
            "it or choose another --out"
        )
    if config.init_from:
        read_meta(config.init_from)  # not a finished run: one line before any data is read
    return config


def _resume_config(
    folder: RunFolder, data: Any, overrides: dict[str, Any]
) -> tuple[TrainConfig, str]:
    saved = folder.read_record("--resume")
    config = TrainConfig.from_dict(saved["config"])
    running = backend.requested()
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
