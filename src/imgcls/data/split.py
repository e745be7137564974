"""Stratified, seeded train/validation/test split, saved as ``split.csv`` with the run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from imgcls.data.sources import ImageSet
from imgcls.errors import ImgclsError, check
from imgcls.io import write_csv


def assign_splits(
    labels: np.ndarray,
    val_split: float,
    test_split: float,
    seed: int,
    predefined: np.ndarray | None = None,
) -> np.ndarray:
    """Name a split ("train", "val" or "test") for every image, stratified by class.

    Each class contributes ``round(n * fraction)`` images to validation and to test, so class
    proportions match across splits; a class keeps at least one training image. Predefined
    splits (``train/``, ``val/``, ``test/`` folders, a CSV ``split`` column, a built-in test
    set) are kept; a missing validation split is carved out of the predefined training images.

    Args:
        labels: int label per image.
        val_split: fraction of each class for validation.
        test_split: fraction of each class for test (ignored when ``predefined`` exists).
        seed: the same seed always gives the same split.
        predefined: an existing split per image, or ``None``.
    """
    labels = np.asarray(labels)
    if predefined is not None:
        out = np.asarray(predefined).astype("<U5").copy()
        if not (out == "val").any() and val_split > 0:
            train = np.flatnonzero(out == "train")
            carved = _stratified(labels[train], val_split, 0.0, seed)
            out[train[carved == "val"]] = "val"
        return out
    return _stratified(labels, val_split, test_split, seed)


def _stratified(labels: np.ndarray, val_split: float, test_split: float, seed: int) -> np.ndarray:
    out = np.full(len(labels), "train", dtype="<U5")
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        n = len(members)
        n_test = min(int(round(n * test_split)), max(n - 1, 0))
        n_val = min(int(round(n * val_split)), max(n - 1 - n_test, 0))
        out[members[:n_test]] = "test"
        out[members[n_test : n_test + n_val]] = "val"
    return out


def write_split_csv(path: str | Path, images: ImageSet, splits: np.ndarray) -> None:
    """Write ``id,label,split`` for every image, atomically."""
    rows = (
        (i, images.class_names[label], s)
        for i, label, s in zip(images.ids, images.labels, splits, strict=True)
    )
    write_csv(path, ["id", "label", "split"], rows)


def read_split_csv(path: str | Path, images: ImageSet) -> np.ndarray:
    """The split of each image in ``images`` as recorded in a run's ``split.csv``.

    Raises:
        ImgclsError: the file is missing, or the data no longer holds the images it names.
    """
    path = Path(path)
    check(path.is_file(), f"split file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        recorded = {row["id"]: row["split"] for row in csv.DictReader(f)}
    splits = np.array([recorded.get(i, "") for i in images.ids], dtype="<U5")
    unknown = int((splits == "").sum())
    if unknown and unknown == len(splits):
        raise ImgclsError(
            f"none of the images in DATA appear in {path}; is this the data the run was trained on?"
        )
    return splits
