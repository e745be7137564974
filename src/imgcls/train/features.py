"""Activations of the frozen bottom of a pretrained backbone, computed once per image and view.

While the bottom of a backbone is frozen, every epoch would push the same pixels through the
same layers. Instead :func:`compute_activations` runs the bottom once over each training image
in ``views`` versions (the image, its mirror, then random crops with flips and colour jitter,
drawn from ``(seed, view)``) and once over each validation image, and the layers above (the
head, and with ``top_blocks`` the backbone's last blocks) train on the stored activations:
each epoch picks one view per image from ``(seed, epoch)``, so they still see augmented data,
at a fraction of the cost. The bottom runs where it is fastest (:mod:`.frozen`: ONNX Runtime
on a CPU); the activations go to float16 row files in ``RUN/activations/``, read back by a
resumed run instead of recomputed, so memory stays flat however many images there are.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.data.augment import apply_params, draw_params
from imgcls.data.cache import DiskRows
from imgcls.io import write_json

FEATURE_BATCH = 32  # images per bottom pass (224x224 activations stay < 200 MB)
FEATURE_SEED = 0x5EED  # separates the views' random draws from the training batches'
RECORD = "activations.json"  # written last: the activations are complete


def view_augment(view: int, augment: tuple[str, ...]) -> tuple[tuple[str, ...], bool | None]:
    """The augmentation of view ``view``: 0 is the image, 1 its mirror (if flips are allowed),
    later ones random crops/flips/colour from ``augment``. Returns ``(augment, flip)``."""
    if view == 0:
        return (), False
    if view == 1 and "flip" in augment:
        return ("flip",), True
    return tuple(a for a in augment if a in ("flip", "crop", "color")), None


def view_pixels(batch: np.ndarray, view: int, augment: tuple[str, ...], seed: int, start: int):
    """float32 pixels of view ``view`` of the images ``batch`` (rows ``start``... of the set):
    the image, its mirror, or a crop/flip/colour drawn from ``(seed, FEATURE_SEED, view, start)``."""
    view_aug, flip = view_augment(view, augment)
    if not view_aug:
        return np.asarray(batch, np.float32)
    if view_aug == ("flip",):
        return np.asarray(batch[:, :, ::-1], np.float32)
    from keras import ops

    rng = np.random.default_rng([seed, FEATURE_SEED, view, start])
    flips = None if flip is None else np.full(len(batch), flip)
    p = draw_params(rng, len(batch), batch.shape[1], batch.shape[2], view_aug, flips)
    return ops.convert_to_numpy(apply_params(batch, p["transform"], p["color"]))


@dataclass
class Activations:
    """The stored activations: ``train`` holds ``views * n`` rows (view ``v`` of image ``i`` at
    row ``v * n + i``), ``val`` one row per validation image (or ``None``)."""

    train: DiskRows
    val: DiskRows | None
    views: int

    def epoch(self, seed: int, epoch: int) -> DiskRows:
        """One view per training image for ``epoch``, picked from ``(seed, epoch)`` (nothing is
        read until the rows are asked for)."""
        n = len(self.train) // self.views
        pick = np.random.default_rng([seed, FEATURE_SEED, epoch]).integers(0, self.views, n)
        return self.train.take(pick * n + np.arange(n))


def compute_activations(
    bottom, x, xv, views: int, augment: tuple[str, ...], seed: int, folder: Path, key: str,
    progress: PassProgress | None = None,
) -> tuple[Activations, dict | None]:  # fmt: skip
    """The activations of ``bottom`` (a Keras model) for ``views`` versions of each training
    image in ``x`` and for each validation image in ``xv``, stored in ``folder``; read back
    when ``folder`` already holds them for ``key`` (what they depend on).

    Returns:
        The :class:`Activations` and the pass's figures (images, seconds, images/s, engine),
        or ``None`` for them when nothing was computed.
    """
    from imgcls.train.frozen import CALIBRATION_IMAGES, frozen_runner

    shape = tuple(int(d) for d in bottom.output_shape[1:])
    found = _stored(folder, key, shape, views)
    if found is not None:
        return found, None
    for name in (RECORD, "train.f16", "val.f16"):
        (folder / name).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    t_prep = time.perf_counter()  # exporting (and quantizing) the bottom, once per cache
    spread = np.unique(np.linspace(0, len(x) - 1, min(CALIBRATION_IMAGES, len(x))).astype(int))
    run, engine = frozen_runner(bottom, calibration=np.asarray(x[spread]) if len(x) else None)
    t0 = time.perf_counter()
    n = len(x)
    for v in range(views):
        _write(
            folder / "train.f16",
            x,
            run,
            v * n,
            progress,
            lambda b, s, v=v: view_pixels(b, v, augment, seed, s),
        )
    if len(xv):
        _write(folder / "val.f16", xv, run, 0, progress, lambda b, s: np.asarray(b, np.float32))
    seconds = time.perf_counter() - t0
    done = views * n + len(xv)
    write_json(folder / RECORD, {"key": key, "shape": list(shape), "views": views})
    figures = {"images": done, "seconds": round(seconds, 2),
               "images_per_s": round(done / max(seconds, 1e-9), 1), "engine": engine,
               "engine_setup_s": round(t0 - t_prep, 2)}  # fmt: skip
    return _stored(folder, key, shape, views), figures


def _write(path: Path, x, run, first_row: int, progress, pixels) -> None:
    """Rows ``first_row...`` of ``path``: ``run(pixels(batch, start))`` for each batch of ``x``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for start in range(0, len(x), FEATURE_BATCH):
            out = np.asarray(run(pixels(x[start : start + FEATURE_BATCH], start)), np.float16)
            os.pwrite(fd, out.tobytes(), (first_row + start) * out[0].nbytes)
            if progress is not None:
                progress.update(len(out))
    finally:
        os.close(fd)


def _stored(folder: Path, key: str, shape: tuple, views: int) -> Activations | None:
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("key") != key:
        return None
    val = folder / "val.f16"
    return Activations(
        DiskRows(folder / "train.f16", shape, dtype=np.float16),
        DiskRows(val, shape, dtype=np.float16) if val.is_file() else None,
        views,
    )


class PassProgress:
    """A progress line for a pass over images: bar, count, ETA and images per second."""

    def __init__(self, label: str, total: int, enabled: bool = True, stream=None):
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self.t0 = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if self.enabled and self.tty:
            self.stream.write(f"\r{self.line()}\x1b[K")
            self.stream.flush()

    def line(self) -> str:
        from imgcls.train.callbacks import clock

        seconds = time.perf_counter() - self.t0
        rate = self.done / max(seconds, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        bar = "=" * int(24 * self.done / max(self.total, 1))
        return (
            f"{self.label} [{bar:<24}] {self.done}/{self.total} {clock(seconds)} "
            f"ETA {clock(eta)} {rate:,.0f} img/s"
        )

    def close(self) -> None:
        if self.enabled:
            self.stream.write(f"\r{self.line()}\x1b[K\n" if self.tty else f"{self.line()}\n")
            self.stream.flush()
