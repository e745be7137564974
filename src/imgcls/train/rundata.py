"""The data of a run: read, split, the config resolved against it, decoded once.

:func:`load_run_data` turns the DATA argument and a config into a :class:`RunData` and the
resolved config; :func:`write_run_files` records what the run trains on (``run.json``,
``split.csv``, ``seen_digests.npy``) before the first step, or, on resume, checks that the
data is still what the run was trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgcls.bundle import RunFolder, write_seen
from imgcls.config import TrainConfig
from imgcls.data.cache import take_rows
from imgcls.data.pipeline import decode_images
from imgcls.data.sizes import typical_size
from imgcls.data.sources import ImageSet, load_source
from imgcls.data.split import (
    assign_splits,
    carved_splits,
    read_split_csv,
    split_warnings,
    write_split_csv,
)
from imgcls.errors import check
from imgcls.io import write_json
from imgcls.train.resolve import DataFacts, resolve

SPLITS = ("train", "val", "test")


@dataclass
class RunData:
    """Decoded pixels and labels per split, and where they came from.

    Attributes:
        argument: DATA as given.
        images: the source's images (before decoding).
        splits: the split of each image in ``images``.
        arrays: ``{"train": (x, y), "val": ..., "test": ...}``, uint8 pixels (an array or
            rows read from disk) and int32 labels.
        decoded: which of ``images`` decoded.
        left_out: one ``{"path", "kind", "detail"}`` per file that did not decode.
        dhash: the difference hash of each decoded image (in ``images`` order) when the
            decoder kept them (:class:`~imgcls.data.cache.Decoded`), else ``None``.
    """

    argument: str
    images: ImageSet
    splits: np.ndarray
    arrays: dict[str, tuple[Any, np.ndarray]]
    decoded: np.ndarray
    left_out: list[dict] = field(default_factory=list)
    dhash: np.ndarray | None = None

    def split_images(self, name: str) -> ImageSet:
        """The images of split ``name`` that decoded, in the order of ``arrays[name]``."""
        return self.images.subset(self.decoded & (self.splits == name))

    @property
    def class_names(self) -> list[str]:
        return self.images.class_names

    def counts(self) -> dict[str, int]:
        return {s: len(self.arrays[s][0]) for s in SPLITS}

    def fingerprint(self) -> str:
        """SHA-256 over every image's id, label and split: what resume checks."""
        h = hashlib.sha256()
        for i, label, s in zip(self.images.ids, self.images.labels, self.splits, strict=True):
            h.update(f"{i}\t{label}\t{s}\n".encode())
        return h.hexdigest()

    def info(self) -> dict[str, Any]:
        """The ``data`` record of ``run.json`` and ``bundle.json``."""
        return {
            "argument": self.argument,
            "source": self.images.source,
            "class_names": self.class_names,
            "fingerprint": self.fingerprint(),
            "n_images": len(self.images),
            "left_out": self.left_out,
            "split_counts": self.counts(),
            **({"corrections": self.images.corrections} if self.images.corrections else {}),
        }


def data_facts(images: ImageSet, splits: np.ndarray, config: TrainConfig) -> DataFacts:
    """What :func:`~imgcls.train.resolve.resolve` needs to know of the data."""
    typical = typical_size(images)
    return DataFacts(
        typical_size=tuple(config.image_size or typical),
        n_train=int((splits == "train").sum()),
        augment=tuple(images.augment),
        cache_size=typical if images.cache is not None else None,
    )


def load_run_data(
    argument: str,
    config: TrainConfig,
    folder: RunFolder,
    resume: bool,
    log: Callable[[str], None],
) -> tuple[RunData, TrainConfig]:
    """Read DATA, split it (or read the run's split on resume), resolve ``config`` and decode.

    Returns:
        The decoded data and the resolved config.
    """
    images = load_source(argument, corrections=config.corrections)
    if resume or config.split_file:
        splits = read_split_csv(folder.split if resume else config.split_file, images)
        named = np.isin(splits, SPLITS)  # a split file may leave images out (never decoded)
        images, splits = images.subset(named), splits[named]
    else:
        splits = assign_splits(
            images.labels, config.val_split, config.test_split, config.seed, images.splits
        )
        for name in carved_splits(images.splits, splits):
            share = config.test_split if name == "test" else config.val_split
            log(f"no {name}/ folder: a stratified {share:.0%} of train/ is the {name} split")
    resolved = resolve(config, data_facts(images, splits, config))
    for note in resolved.notes:
        log(note)
    config = resolved.config
    pixels, ok, left_out, dhash = decode_images(images, config.image_size)
    labels, kept = images.labels[ok], splits[ok]
    arrays = {
        s: (take_rows(pixels, np.flatnonzero(kept == s)), labels[kept == s].astype(np.int32))
        for s in SPLITS
    }
    data = RunData(argument, images, splits, arrays, ok, left_out, dhash)
    for issue in left_out:
        log(f"imgcls: left out {issue['path']}: {issue['kind']}: {issue['detail']}")
    counts = data.counts()
    check(counts["train"] > 0, f"DATA {argument}: no training images left after the split")
    for warning in split_warnings(labels, kept, images.class_names):
        log(f"imgcls: warning: {warning}")
    return data, config


def write_run_files(
    folder: RunFolder, data: RunData, config: TrainConfig, resume: bool, write: bool = True
) -> dict:
    """Write ``run.json``, ``split.csv`` and ``seen_digests.npy`` (or, on resume, check that the
    data is the run's own); return the run record. ``write=False``: only return it (the other
    processes of a data-parallel job)."""
    record = {"config": config.to_dict(), "data": data.info()}
    if resume:
        saved = folder.read_record("--resume")
        check(
            saved["data"]["fingerprint"] == record["data"]["fingerprint"],
            f"--resume: the data at {data.argument} differs from what run {folder.path} was "
            "trained on (images, labels or split changed); resuming is refused. Start a new run",
        )
        return record
    if not write:
        return record
    folder.path.mkdir(parents=True, exist_ok=True)
    write_split_csv(folder.split, data.images, data.splits)
    seen = [data.arrays["train"][0], data.arrays["val"][0]]
    kept = data.splits[data.decoded]
    hashes = None if data.dhash is None else data.dhash[np.isin(kept, ("train", "val"))]
    write_seen(folder.path, seen, hashes)
    write_json(folder.run, record)
    return record
