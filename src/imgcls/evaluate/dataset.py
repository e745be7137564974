"""The labelled images an evaluation (or a calibration) runs on, decoded once."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgcls.bundle import BundleMeta, RunFolder
from imgcls.data.pipeline import decode_images
from imgcls.data.sources import ImageSet, load_source
from imgcls.data.split import read_split_csv
from imgcls.errors import ImgclsError, check

SPLIT_CHOICES = ("test", "val", "train", "all")


@dataclass
class EvalSet:
    """Decoded images with labels in the model's class order.

    Attributes:
        images: the images that were asked for (before decoding).
        pixels: uint8 ``(n, H, W, 3)`` of those that decoded.
        y_true: label per decoded image, indexing the model's ``class_names``.
        ids: id per decoded image.
        split: the split used, or ``"all"``.
        left_out: one ``{"path", "kind", "detail"}`` per file that did not decode.
    """

    images: ImageSet
    pixels: np.ndarray
    y_true: np.ndarray
    ids: list[str]
    split: str
    left_out: list[dict] = field(default_factory=list)

    @property
    def paths(self) -> list[str] | None:
        """The file of each decoded image (``None`` for a built-in set held as pixels)."""
        if self.images.paths is None:
            return None
        done = {i: p for i, p in zip(self.images.ids, self.images.paths, strict=True)}
        return [done[i] for i in self.ids]

    def describe(self, data: str | Path, class_names: list[str]) -> dict:
        """What was evaluated: data argument and source, split, counts and a fingerprint."""
        h = hashlib.sha256()
        for i, y in zip(self.ids, self.y_true, strict=True):
            h.update(f"{i}\t{class_names[y]}\n".encode())
        counts = np.bincount(self.y_true, minlength=len(class_names))
        return {
            "argument": str(data),
            "source": self.images.source,
            "split": self.split,
            "n_images": int(len(self.ids)),
            "n_left_out": len(self.left_out),
            "fingerprint": h.hexdigest(),
            "class_counts": {name: int(c) for name, c in zip(class_names, counts, strict=True)},
        }


def load_eval_set(
    run: str | Path,
    data: str | Path,
    meta: BundleMeta,
    split: str | None,
    default_split: str = "test",
    corrections: str | Path | None = None,
) -> EvalSet:
    """Read and decode DATA for RUN.

    When DATA is the data set RUN was trained on, only ``split`` (default ``default_split``)
    counts, exactly as recorded in ``RUN/split.csv``; any other DATA counts every image.
    ``corrections``: a corrections file to apply (default: a folder's own, when it has one).

    Raises:
        ImgclsError: DATA holds labels the model does not know, the split is empty, or no
            image could be decoded.
    """
    check(
        split is None or split in SPLIT_CHOICES,
        f"`split` must be one of {set(SPLIT_CHOICES)}. Received: split={split}",
    )
    images = load_source(data, min_classes=1, corrections=corrections)
    unknown = sorted(set(images.class_names) - set(meta.class_names))
    check(
        not unknown,
        f"DATA {data} has label(s) the model does not know: {unknown[:5]}; "
        f"the model knows {meta.class_names[:20]}",
    )
    same_data = images.source == meta.data.get("source")
    if same_data and split != "all":
        split = split or default_split
        splits = read_split_csv(RunFolder(run).split, images)
        images = images.subset(splits == split)
        check(
            len(images) > 0,
            f"the {split} split of run {run} is empty; pass --split all or another split",
        )
    elif split not in (None, "all"):
        raise ImgclsError(
            f"--split {split} applies only to the data the run was trained on "
            f"({meta.data.get('argument')}); {data} is evaluated whole"
        )
    pixels, ok, issues, _ = decode_images(images, tuple(meta.image_size))
    check(
        len(pixels) > 0, f"DATA {data}: no image could be decoded ({len(issues)} file(s) left out)"
    )
    remap = np.array([meta.class_names.index(c) for c in images.class_names])
    ids = [i for i, good in zip(images.ids, ok, strict=True) if good]
    return EvalSet(images, pixels, remap[images.labels[ok]], ids, split or "all", issues)


def checkpoint_info(run: str | Path) -> dict:
    """Path, size, modification time and SHA-256 of ``RUN/model.keras``."""
    path = RunFolder(run).model
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    stat = os.stat(path)
    from datetime import datetime, timezone

    mtime = datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc).isoformat(timespec="seconds")
    return {
        "path": str(path.resolve()),
        "bytes": stat.st_size,
        "mtime": mtime,
        "sha256": h.hexdigest(),
    }
