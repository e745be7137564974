"""What ``imgcls train`` runs: training (:mod:`imgcls.train`), then the test split scored once
through the saved bundle, as ``imgcls evaluate`` would score it (:mod:`imgcls.predict`).

Composing the stages here keeps each one below the next: the trainer writes a bundle and knows
nothing of prediction; the score comes from the same inference graph every later stage runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.bundle import RunFolder, write_meta
from imgcls.config import TrainConfig
from imgcls.data.pipeline import decode_images
from imgcls.evaluate.metrics import compute_metrics
from imgcls.io import Timeline, peak_rss_bytes
from imgcls.predict import Predictor
from imgcls.train import TrainedRun, run_training


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    history: list[dict[str, float]]
    stopped: str  # one of imgcls.train.state.STOP_REASONS
    test_metrics: dict[str, Any] | None = None
    left_out: list[dict] = field(default_factory=list)
    peak_rss_bytes: int | None = None  # this process's memory high-water mark
    timeline: Timeline = field(default_factory=Timeline)  # where the time went, stage by stage


def train(
    data: str | Path | None = None,
    out: str | Path = "runs/latest",
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    verbose: bool = True,
    timeline: Timeline | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a model on DATA, write the run folder ``out`` and score its test split.

    Args:
        data: a folder per class, a CSV manifest, a prepared folder or a built-in name. With
            ``resume`` it may be left out: the run remembers its data.
        out: the run folder (model bundle, split.csv, history.csv, checkpoints).
        config: a :class:`TrainConfig`; ``overrides`` replace its fields (``epochs=3``).
        resume: continue the run in ``out`` from its newest good checkpoint.
        verbose: print progress and results to stderr.
        timeline: where the stages' times go (default: a new one, started now; the command
            line starts its own when the process starts).

    Returns:
        A :class:`TrainResult`.

    Example:
        >>> result = imgcls.train("digits", out="runs/digits", epochs=5)   # doctest: +SKIP
        >>> result.test_metrics["accuracy"] > 0.9                         # doctest: +SKIP
        True
    """
    timeline = timeline or Timeline()
    run = run_training(data, out, config, resume=resume, verbose=verbose, timeline=timeline,
                       **overrides)  # fmt: skip
    metrics = None
    if run.meta is not None and len(run.test_images):
        metrics = score_test(run)
        timeline.mark("test")
        if verbose:
            tta = "" if run.meta.tta == "none" else f", test-time augmentation {run.meta.tta}"
            print(
                f"test accuracy: {metrics['accuracy']:.4f} ({metrics['n_images']} images{tta})",
                file=sys.stderr,
                flush=True,
            )
    peak = peak_rss_bytes()
    if run.meta is not None:  # the writing process's figures, in run.json
        RunFolder(run.run_dir).update_record(
            peak_rss_mb=round(peak / 2**20) if peak else None, timeline=timeline.stages
        )
    return TrainResult(run.run_dir, run.history, run.stopped, metrics, run.left_out, peak,
                       timeline)  # fmt: skip


def score_test(run: TrainedRun) -> dict[str, Any]:
    """The test split's metrics through the run's saved bundle: the pixels training decoded
    when the bundle predicts at the training size, else its images decoded at the bundle's
    size (a larger test size, FixRes); the accuracy is recorded in ``bundle.json``."""
    trained = run.test_pixels
    if trained is not None and tuple(trained.shape[1:3]) == tuple(run.meta.image_size):
        pixels, ok = trained, np.ones(len(run.test_images), dtype=bool)
    else:
        pixels, ok, _, _ = decode_images(run.test_images, tuple(run.meta.image_size))
    probs = Predictor(run.run_dir, meta=run.meta).predict_pixels(pixels)
    metrics = compute_metrics(run.test_images.labels[ok], probs, run.class_names)
    run.meta.metrics["test_accuracy"] = metrics["accuracy"]
    write_meta(run.run_dir, run.meta)
    return metrics
