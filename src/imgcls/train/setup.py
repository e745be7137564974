"""Pieces the trainer sets up before the first step: arrays, image size, seeds, optimizer."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from imgcls.config import MAX_IMAGE_SIDE, TrainConfig
from imgcls.data.pipeline import decode_images
from imgcls.data.sources import ImageSet

DEFAULT_MIN_SIDE = 16  # pixels: small sources (8x8 digits) are upsampled to at least this
DEFAULT_MAX_SIDE = 224  # pixels: large photos are shrunk to at most this by default
SIZE_SAMPLE = 64  # images whose headers are read to pick the default size
WARMUP_EPOCHS = 1  # linear learning-rate warm-up before the decay


def infer_image_size(images: ImageSet) -> tuple[int, int]:
    """The size of a prepared folder's pixel cache; else the most common (height, width) among a
    sample, clamped to [16, 224] pixels a side."""
    if images.cache is not None:
        return tuple(int(s) for s in np.load(images.cache, mmap_mode="r").shape[1:3])
    if images.images is not None:
        h, w = images.images.shape[1:3]
    else:
        from PIL import Image

        sizes: Counter = Counter()
        step = max(1, len(images.paths) // SIZE_SAMPLE)
        for path in images.paths[::step][:SIZE_SAMPLE]:
            try:
                with Image.open(path) as img:
                    sizes[(img.height, img.width)] += 1
            except Exception:  # noqa: BLE001 - bad files are reported when decoded
                continue
        h, w = sizes.most_common(1)[0][0] if sizes else (DEFAULT_MIN_SIDE, DEFAULT_MIN_SIDE)
    clamp = lambda s: int(min(max(s, DEFAULT_MIN_SIDE), min(DEFAULT_MAX_SIDE, MAX_IMAGE_SIDE)))  # noqa: E731
    return clamp(h), clamp(w)


def prepare_arrays(
    images: ImageSet, splits: np.ndarray, size: tuple[int, int]
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[dict]]:
    """Decode every image once and group pixels and labels by split.

    Returns ``({"train": (x, y), "val": ..., "test": ...}, left_out)``; files that fail to
    decode are left out and listed, never fatal mid-epoch.
    """
    pixels, ok, issues = decode_images(images, size)
    labels, kept_splits = images.labels[ok], splits[ok]
    arrays = {}
    for name in ("train", "val", "test"):
        mask = kept_splits == name
        arrays[name] = (pixels[mask] if mask.any() else pixels[:0], labels[mask].astype(np.int32))
    return arrays, issues


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic``, make TF ops reproducible."""
    import keras
    import tensorflow as tf

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def build_optimizer(
    config: TrainConfig,
    recipe: dict[str, Any],
    steps_per_epoch: int,
    epochs: int | None = None,
    lr: float | None = None,
) -> Any:
    """The recipe's optimizer (AdamW or Nesterov SGD) with warm-up then cosine or linear decay.

    ``epochs`` and ``lr`` default to the config's; a training phase passes its own.
    """
    import keras

    lr = config.lr if lr is None else lr
    total = max(1, (config.epochs if epochs is None else epochs) * steps_per_epoch)
    warmup = min(WARMUP_EPOCHS * steps_per_epoch, total // 4)
    if recipe.get("schedule") == "linear":
        schedule = __getattr__("WarmupLinear")(lr, warmup, total)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=lr * 0.01 if warmup else lr,
            decay_steps=max(1, total - warmup),
            warmup_target=lr if warmup else None,
            warmup_steps=warmup,
        )
    if recipe.get("optimizer") == "sgd":
        return keras.optimizers.SGD(
            schedule, momentum=0.9, nesterov=True, weight_decay=config.weight_decay or None
        )
    return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay or 0.0)


def _warmup_linear_class():
    import keras

    @keras.saving.register_keras_serializable(package="imgcls")
    class WarmupLinear(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up from 0 to ``peak`` over ``warmup`` steps, then linear decay to 0 at ``total``.

        Example:
            >>> WarmupLinear(0.4, 10, 100)(10)  # doctest: +SKIP
            0.4
        """

        def __init__(self, peak: float, warmup: int, total: int):
            self.peak, self.warmup, self.total = float(peak), int(warmup), int(total)

        def __call__(self, step):
            from keras import ops

            step = ops.cast(step, "float32")
            up = step / max(self.warmup, 1)
            down = (self.total - step) / max(self.total - self.warmup, 1)
            return self.peak * ops.clip(ops.minimum(up, down), 0.0, 1.0)

        def get_config(self) -> dict[str, Any]:
            return {"peak": self.peak, "warmup": self.warmup, "total": self.total}

    return WarmupLinear


def __getattr__(name: str) -> Any:  # WarmupLinear is built on first use so importing stays TF-free
    if name == "WarmupLinear":
        cls = _warmup_linear_class()
        globals()["WarmupLinear"] = cls
        return cls
    raise AttributeError(name)
