"""Evaluation of a trained run on a data set: metrics.json (and, later, the report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from imgcls.bundle import read_meta
from imgcls.data.pipeline import decode_images
from imgcls.data.sources import load_source
from imgcls.data.split import read_split_csv
from imgcls.errors import ImgclsError, check
from imgcls.evaluate.metrics import compute_metrics
from imgcls.io import write_json

SPLIT_CHOICES = ("test", "val", "train", "all")


def evaluate(run: str | Path, data: str | Path, out: str | Path | None = None, split: str | None = None,
             predictor=None) -> dict[str, Any]:
    """Evaluate RUN on DATA and write ``out/metrics.json``.

    When DATA is the data set RUN was trained on, only its ``split`` (default: test) counts,
    exactly as recorded in ``RUN/split.csv``; any other DATA counts every image.

    Raises:
        ImgclsError: DATA holds labels the model does not know, or the split is empty.
    """
    from imgcls.predict import Predictor

    check(split is None or split in SPLIT_CHOICES, f"`split` must be one of {set(SPLIT_CHOICES)}. Received: split={split}")
    meta = read_meta(run)
    images = load_source(data, min_classes=1)
    unknown = sorted(set(images.class_names) - set(meta.class_names))
    check(not unknown, f"DATA {data} has label(s) the model does not know: {unknown[:5]}; "
                       f"the model knows {meta.class_names[:20]}")
    same_data = images.source == meta.data.get("source")
    if same_data and split != "all":
        split = split or "test"
        splits = read_split_csv(Path(run) / "split.csv", images)
        images = images.subset(splits == split)
        check(len(images) > 0, f"the {split} split of run {run} is empty; pass --split all or another split")
    elif split not in (None, "all"):
        raise ImgclsError(f"--split {split} applies only to the data the run was trained on "
                          f"({meta.data.get('argument')}); {data} is evaluated whole")
    predictor = predictor or Predictor(run, meta=meta)
    pixels, ok, issues = decode_images(images, tuple(meta.image_size))
    check(len(pixels) > 0, f"DATA {data}: no image could be decoded")
    remap = np.array([meta.class_names.index(c) for c in images.class_names])
    y_true = remap[images.labels[ok]]
    probs = predictor.predict_pixels(pixels)
    metrics = compute_metrics(y_true, probs, meta.class_names)
    metrics.update({"run": str(run), "data": str(data), "split": split or "all", "left_out": issues})
    if out is not None:
        write_json(Path(out) / "metrics.json", metrics)
    return metrics
