"""Features of a frozen backbone, computed once per image and view, for training its head.

While the backbone is frozen, every epoch would push the same pixels through the same network
again. Instead :func:`compute_features` runs the backbone once over each training image in
``views`` versions (the image, its mirror, then random crops with flips and colour jitter,
drawn from ``(seed, view)``) and once over each validation image, and the head trains on the
stored vectors: each epoch picks one view per image from ``(seed, epoch)``, so the head still
sees augmented data, and an epoch takes milliseconds instead of minutes on a CPU.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from imgcls.data.augment import draw_params

FEATURE_BATCH = 32  # images per backbone forward pass (224x224 activations stay < 200 MB)
FEATURE_SEED = 0x5EED  # separates the views' random draws from the training batches'


def view_augment(view: int, augment: tuple[str, ...]) -> tuple[tuple[str, ...], bool | None]:
    """The augmentation of view ``view``: 0 is the image, 1 its mirror (if flips are allowed),
    later ones random crops/flips/colour from ``augment``. Returns ``(augment, flip)``."""
    if view == 0:
        return (), False
    if view == 1 and "flip" in augment:
        return ("flip",), True
    return tuple(a for a in augment if a in ("flip", "crop", "color")), None


def compute_features(
    extractor,
    x: np.ndarray,
    views: int,
    augment: tuple[str, ...],
    seed: int,
    progress: PassProgress | None = None,
) -> np.ndarray:
    """Backbone features of ``views`` versions of each uint8 image in ``x``.

    Args:
        extractor: a Keras model from ``(pixels, transform, color)`` to features (see
            :func:`feature_extractor`).
        x: uint8 ``(N, H, W, 3)``.
        views: versions per image (1: the images as they are).
        augment: what the views may use (``flip``, ``crop``, ``color``).
        seed: the run's seed; view ``v``'s draws come from ``(seed, FEATURE_SEED, v, batch)``.
        progress: a :class:`PassProgress` to update.

    Returns:
        float32 ``(views, N, D)``.
    """
    n, h, w = x.shape[:3]
    out = None
    for v in range(views):
        view_aug, flip = view_augment(v, augment)
        for start in range(0, n, FEATURE_BATCH):
            batch = x[start : start + FEATURE_BATCH]
            rng = np.random.default_rng([seed, FEATURE_SEED, v, start])
            flips = None if flip is None else np.full(len(batch), flip)
            params = draw_params(rng, len(batch), h, w, view_aug, flips)
            feats = np.asarray(
                extractor.predict_on_batch([batch, params["transform"], params["color"]]),
                dtype=np.float32,
            )
            if out is None:
                out = np.empty((views, n, feats.shape[-1]), dtype=np.float32)
            out[v, start : start + len(batch)] = feats
            if progress is not None:
                progress.update(len(batch))
    return out


def feature_extractor(model, image_shape: tuple[int, int, int]):
    """A Keras model ``(pixels, transform, color) -> features``: :mod:`imgcls.data.augment`'s
    transform, then ``model``'s layers up to its head (``head_dropout``)."""
    import keras

    from imgcls.data.augment import apply_params
    from imgcls.models.applications import feature_model

    pixels = keras.Input(image_shape, name="pixels")
    transform = keras.Input((8,), name="transform")
    color = keras.Input((3,), name="color")
    views = keras.layers.Lambda(lambda t: apply_params(*t), name="view")([pixels, transform, color])
    return keras.Model([pixels, transform, color], feature_model(model)(views), name="extractor")


def epoch_features(features: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """One view per image for ``epoch``: ``(N, D)`` picked from ``(views, N, D)`` by
    ``(seed, epoch)``, so resuming replays the same choice."""
    views, n = features.shape[:2]
    pick = np.random.default_rng([seed, FEATURE_SEED, epoch]).integers(0, views, n)
    return features[pick, np.arange(n)]


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
