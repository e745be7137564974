"""Stratified, seeded train/validation/test split, saved as ``split.csv`` with the run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from imgcls.data.sources import ImageSet
from imgcls.errors import ImgclsError, check
from imgcls.io import open_csv, write_csv

MIN_TEST_IMAGES = 5  # test images of a class below which its per-class figures are noise


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
    set) are kept; a missing validation or test split is carved out of the predefined training
    images (stratified, ``val_split`` and ``test_split`` of them), so a ``train/`` + ``val/``
    tree still gets a test set that evaluation can use.

    Args:
        labels: int label per image.
        val_split: fraction of each class for validation.
        test_split: fraction of each class for test (with ``predefined``: of its ``train``
            images, used only when it has no test split).
        seed: the same seed always gives the same split.
        predefined: an existing split per image, or ``None``.
    """
    labels = np.asarray(labels)
    if predefined is not None:
        out = np.asarray(predefined).astype("<U5").copy()
        missing_val = val_split if not (out == "val").any() else 0.0
        missing_test = test_split if not (out == "test").any() else 0.0
        if missing_val or missing_test:
            train = np.flatnonzero(out == "train")
            carved = _stratified(labels[train], missing_val, missing_test, seed)
            out[train] = carved
        return out
    return _stratified(labels, val_split, test_split, seed)


def carved_splits(predefined: np.ndarray | None, splits: np.ndarray) -> list[str]:
    """The splits :func:`assign_splits` carved out of a predefined ``train/`` (e.g. ``["test"]``)."""
    if predefined is None:
        return []
    return [s for s in ("val", "test") if (splits == s).any() and not (predefined == s).any()]


def split_warnings(labels: np.ndarray, splits: np.ndarray, class_names: list[str]) -> list[str]:
    """One line per class whose test split is too small for its figures to mean anything."""
    test = np.asarray(labels)[np.asarray(splits) == "test"]
    if not len(test):
        return []
    counts = np.bincount(test, minlength=len(class_names))
    tiny = [
        (name, int(n)) for name, n in zip(class_names, counts, strict=True) if n < MIN_TEST_IMAGES
    ]
    if not tiny:
        return []
    listed = ", ".join(f"{name} ({n})" for name, n in tiny[:5]) + (" ..." if len(tiny) > 5 else "")
    return [
        f"{len(tiny)} class(es) have fewer than {MIN_TEST_IMAGES} test images: {listed}; their "
        "per-class test figures are noise (add images, or read the overall accuracy only)"
    ]


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
    with open_csv(path, f"split file {path}") as f:
        reader = csv.DictReader(f)
        check(
            {"id", "split"} <= set(reader.fieldnames or ()),
            f"split file {path} must have `id` and `split` columns (as a run's split.csv). "
            f"Received: {reader.fieldnames}",
        )
        recorded = {row["id"]: row["split"] for row in reader}
    odd = sorted(set(recorded.values()) - {"train", "val", "test"})
    if odd:
        raise ImgclsError(
            f"split file {path}: `split` must be train, val or test. Received: {odd[0]!r}"
        )
    splits = np.array([recorded.get(i, "") for i in images.ids], dtype="<U5")
    unknown = int((splits == "").sum())
    if unknown and unknown == len(splits):
        raise ImgclsError(
            f"none of the images in DATA appear in {path}; is this the data the run was trained on?"
        )
    return splits
