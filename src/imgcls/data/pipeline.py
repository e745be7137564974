"""Decoded pixels in memory, batched by ``tf.data`` with in-graph augmentation.

Images are decoded once (:func:`decode_images`), so no epoch decodes a JPEG again. The order
of each epoch and every random augmentation are pure functions of ``(seed, epoch, batch)``:
resuming at any step of any epoch replays exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from imgcls.data.decode import DecodeError, load_image, resize_array
from imgcls.data.sources import ImageSet

DECODE_CHUNK = 256  # images per decode task: large enough to amortise scheduling
# Batches gathered in parallel and held ready ahead of the model. Fixed instead of AUTOTUNE:
# with tf.data's autotuning on (TF 2.21), deleting a used-up iterator waits for the tuning
# thread's next wake-up, which stalled the end of an 80-second CIFAR-10 epoch by ~34 s.
PARALLEL_BATCHES = 2


def decode_images(
    images: ImageSet, size: tuple[int, int], workers: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Decode and resize every image with the shared decoder.

    Images from a folder written by ``imgcls prepare`` whose pixel cache holds ``size`` are
    read from the cache instead: nothing is decoded.

    Args:
        images: the set to decode.
        size: ``(height, width)``.
        workers: decode threads (Pillow releases the GIL while decoding); default: CPU count.

    Returns:
        ``(pixels, ok, issues)``: uint8 ``(n_ok, H, W, 3)``, a boolean mask over ``images``
        of those that decoded, and one ``{"path", "kind", "detail"}`` per file left out.
    """
    cached = _from_cache(images, size)
    if cached is not None:
        return cached, np.ones(len(images), dtype=bool), []
    if images.images is not None:
        pixels = images.images
        if pixels.shape[1:3] != tuple(size) or pixels.shape[-1] != 3:
            pixels = resize_array(pixels, size)
        return pixels, np.ones(len(images), dtype=bool), []
    n = len(images)
    out = np.empty((n, size[0], size[1], 3), dtype=np.uint8)
    ok = np.ones(n, dtype=bool)
    issues: list[dict] = []

    def work(start: int) -> list[dict]:
        found = []
        for i in range(start, min(start + DECODE_CHUNK, n)):
            try:
                out[i] = load_image(images.paths[i], size)
            except DecodeError as e:
                ok[i] = False
                found.append({"path": images.paths[i], "kind": e.kind, "detail": e.detail})
        return found

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for found in pool.map(work, range(0, n, DECODE_CHUNK)):
            issues += found
    return (out if ok.all() else out[ok]), ok, issues


def _from_cache(images: ImageSet, size: tuple[int, int]) -> np.ndarray | None:
    """The rows of a prepared folder's pixel cache when it holds ``size``; else ``None``."""
    if images.cache is None or images.cache_rows is None or not os.path.isfile(images.cache):
        return None
    cache = np.load(images.cache, mmap_mode="r")
    rows = images.cache_rows
    if cache.shape[1:] != (size[0], size[1], 3) or (len(rows) and rows.max() >= len(cache)):
        return None
    return np.asarray(cache[rows])  # a copy in memory: training gathers batches from it every step


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped; a batch never exceeds the data)."""
    return max(1, n_images // max(1, min(batch_size, n_images)))


@dataclass(frozen=True)
class EpochPlan:
    """One training epoch's batches: which images in which order, and how they are augmented.

    The order is a permutation seeded by ``(seed, epoch)`` (the last partial batch dropped); a
    batch's augmentation is drawn from ``(seed, epoch, step)``, so a run resumed at ``skip_steps``
    sees exactly the batches an uninterrupted one would. ``augment`` names the augmentations:
    ``flip`` and ``translate`` (small images; ``translate`` is the largest shift in pixels,
    default an eighth of the side), or ``crop``/``color`` for photos
    (:mod:`imgcls.data.augment`). With ``alternate_flip`` (airbench) each image is mirrored in
    every other epoch: a seeded coin picks the first epoch's half and the halves swap each
    epoch, so every image is seen both ways within two epochs instead of by chance.
    ``shard=(i, n)`` gives process ``i`` of a data-parallel job its slice of every batch.
    """

    batch_size: int
    seed: int
    epoch: int
    augment: tuple[str, ...] = ()
    skip_steps: int = 0
    translate: int | None = None
    alternate_flip: bool = False
    shard: tuple[int, int] = (0, 1)

    def order(self, n: int) -> np.ndarray:
        """Image indices ``(steps, batch)`` of the epoch's batches, step 0 first."""
        bs, steps = min(self.batch_size, n), steps_per_epoch(n, self.batch_size)
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.permutation(n)[: steps * bs].reshape(steps, bs)

    def first_flips(self, n: int) -> np.ndarray | None:
        """With ``alternate_flip``: which of ``n`` images are mirrored in even epochs."""
        if not self.alternate_flip:
            return None
        return np.random.default_rng([self.seed, 1]).random(n) < 0.5


def train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    plan: EpochPlan,
    sample_weight: np.ndarray | None = None,
    num_classes: int | None = None,
):
    """The batches of the training epoch ``plan`` describes, from step ``plan.skip_steps`` on.

    With ``num_classes`` the labels are one-hot; ``sample_weight`` holds one weight per class.
    ``x`` is uint8 images ``(N, H, W, 3)``, or any other array (features of a frozen backbone),
    which is batched as it is (not augmented).

    On the TensorFlow backend this is a ``tf.data`` pipeline; on JAX and PyTorch a
    :func:`batches` sequence whose augmentation runs on the backend's device.
    """
    import keras

    if keras.config.backend() != "tensorflow":
        return batches(x, y, plan, sample_weight, num_classes)
    import tensorflow as tf

    n = len(x)
    order = plan.order(n)
    steps, bs = order.shape
    seed, epoch, augment = plan.seed, plan.epoch, plan.augment
    ds = tf.data.Dataset.from_tensor_slices(
        (order[plan.skip_steps :], np.arange(plan.skip_steps, steps, dtype=np.int64))
    )
    item_shape = tuple(x.shape[1:])
    images_in = x.ndim == 4
    first_flips = plan.first_flips(n)
    photo = images_in and bool({"crop", "color"} & set(augment))

    def photo_batch(index, step):
        from imgcls.data.augment import draw_params

        flips = None if first_flips is None else first_flips[index] != bool(epoch % 2)
        rng = np.random.default_rng([seed, epoch, int(step)])
        params = draw_params(rng, len(index), item_shape[0], item_shape[1], augment, flips)
        return x[index], y[index], params["transform"], params["color"]

    def gather(index, step):
        if photo:
            from imgcls.data.augment import apply_params

            images, labels, transform, color = tf.numpy_function(
                photo_batch,
                [index, step],
                (tf.uint8, tf.int32, tf.float32, tf.float32),
                stateful=False,
            )
            images = tf.ensure_shape(images, (bs, *item_shape))
            transform, color = tf.ensure_shape(transform, (bs, 8)), tf.ensure_shape(color, (bs, 3))
            images = apply_params(images, transform, color)
        else:
            images, labels = tf.numpy_function(
                lambda i: (x[i], y[i]), [index], (tf.as_dtype(x.dtype), tf.int32), stateful=False
            )
            images = tf.ensure_shape(images, (bs, *item_shape))
        labels = tf.ensure_shape(labels, (bs,))
        if images_in and not photo:
            flips = None
            if first_flips is not None:
                flips = tf.not_equal(tf.gather(tf.constant(first_flips), index), bool(epoch % 2))
            images = augment_batch(
                images,
                tf.stack([tf.constant(seed * 1_000_003 + epoch, tf.int64), step]),
                augment,
                translate=plan.translate,
                flips=flips,
            )
        weights = (
            None
            if sample_weight is None
            else tf.gather(tf.constant(sample_weight, tf.float32), labels)
        )
        if num_classes:
            labels = tf.one_hot(labels, num_classes)
        return (images, labels) if weights is None else (images, labels, weights)

    return _batched(ds.map(gather, num_parallel_calls=PARALLEL_BATCHES, deterministic=True))


def eval_dataset(
    x: np.ndarray,
    y: np.ndarray | None,
    batch_size: int,
    num_classes: int | None = None,
    shard: tuple[int, int] = (0, 1),
):
    """Batches of images (or features) in order, no augmentation; the last batch may be smaller
    (labels one-hot with ``num_classes``)."""
    import keras

    if keras.config.backend() != "tensorflow":
        return batches(
            x, y, EpochPlan(batch_size, 0, 0, shard=shard), num_classes=num_classes, ordered=True
        )
    import tensorflow as tf

    n = len(x)
    starts = np.arange(0, n, batch_size, dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices(starts)
    labels = np.zeros(n, np.int32) if y is None else y
    item_shape = tuple(x.shape[1:])

    def gather(start):
        images, lab = tf.numpy_function(
            lambda s: (x[s : s + batch_size], labels[s : s + batch_size]),
            [start],
            (tf.as_dtype(x.dtype), tf.int32),
            stateful=False,
        )
        images = tf.cast(tf.ensure_shape(images, (None, *item_shape)), tf.float32)
        lab = tf.ensure_shape(lab, (None,))
        return images, (tf.one_hot(lab, num_classes) if num_classes else lab)

    return _batched(ds.map(gather, num_parallel_calls=PARALLEL_BATCHES, deterministic=True))


def _batched(ds):
    """``ds`` with batches prefetched and tf.data's autotuning (and its tuning thread) off."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(PARALLEL_BATCHES).with_options(options)


def augment_batch(images, seed, augment: tuple[str, ...], translate: int | None = None, flips=None):
    """Random flips and reflect-padded translations of a uint8 batch, returned as float32.

    ``seed`` is a shape-(2,) int64 tensor; the same seed gives the same augmentation.
    ``translate`` is the largest shift in pixels (default: an eighth of the side, 4 for 32x32);
    ``flips``, a boolean per image, replaces the coin toss for "flip".
    """
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    if not augment:
        return images
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    if "flip" in augment:
        if flips is None:
            coin = tf.random.stateless_uniform([batch, 1, 1, 1], seed=seed) < 0.5
        else:
            coin = tf.reshape(flips, [-1, 1, 1, 1])
        images = tf.where(coin, tf.reverse(images, axis=[2]), images)
    if "translate" in augment:
        pad = translate or max(1, images.shape[1] // 8)  # 4 for 32x32, the usual CIFAR setting
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        offsets = tf.random.stateless_uniform(
            [2, batch], seed=seed + 1, maxval=2 * pad + 1, dtype=tf.int32
        )
        rows = tf.range(height)[None, :] + offsets[0][:, None]
        cols = tf.range(width)[None, :] + offsets[1][:, None]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    return images


def batches(
    x: np.ndarray,
    y: np.ndarray | None,
    plan: EpochPlan,
    sample_weight: np.ndarray | None = None,
    num_classes: int | None = None,
    ordered: bool = False,
):
    """One epoch's batches for the JAX and PyTorch backends: a ``keras.utils.PyDataset``.

    Batch ``i`` is step ``plan.skip_steps + i``; its images are gathered on the host and
    augmented with ``keras.ops`` (:func:`imgcls.data.augment.apply_params`) on the backend's
    device, from parameters drawn with ``(seed, epoch, step)``, so a resumed run sees the same
    batches. With ``plan.shard=(i, n)`` process ``i`` gets its slice of every batch (a batch
    that does not split evenly loses its last images). ``ordered=True`` batches every image in
    order, the last batch possibly smaller (evaluation). Other arguments as
    :func:`train_dataset`'s.
    """
    return _batches_class()(x, y, plan, sample_weight, num_classes, ordered)


@functools.cache
def _apply_params():
    """The augmentation, compiled for the device where that pays (one compilation a process)."""
    from imgcls import backend
    from imgcls.data.augment import apply_params

    return backend.device_function(apply_params)


@functools.cache
def _batches_class():
    import keras

    return type("Batches", (_BatchesMixin, keras.utils.PyDataset), {})


class _BatchesMixin:
    def __init__(self, x, y, plan: EpochPlan, sample_weight, num_classes, ordered: bool):
        # No worker threads: with two, a resumed JAX run saw other batches than an uninterrupted
        # one (same weights, different losses from the first step). On the main thread the
        # host work is a gather and a few random numbers; the augmentation itself is dispatched
        # asynchronously to the device.
        super().__init__(workers=0, use_multiprocessing=False)
        n, bs = len(x), plan.batch_size
        self.x, self.y, self.plan = x, y, plan
        self.augment = tuple(plan.augment) if x.ndim == 4 else ()
        self.weights, self.num_classes = sample_weight, num_classes
        if ordered:
            self.batches = [np.arange(i, min(i + bs, n)) for i in range(0, n, bs)]
        else:
            self.batches = list(plan.order(n))
        self.first_flips = plan.first_flips(n)
        parts = plan.shard[1]  # (process, processes): this process feeds its slice of a batch
        if parts > 1:  # every process must get an equal slice: a last, smaller batch (in
            # evaluation) loses at most parts - 1 images
            self.batches = [b[: len(b) - len(b) % parts] for b in self.batches if len(b) >= parts]

    def __len__(self) -> int:
        return len(self.batches) - self.plan.skip_steps

    def __getitem__(self, i: int):
        from keras import ops

        plan = self.plan
        step = plan.skip_steps + i
        index = self.batches[step]
        part, parts = plan.shard
        local = slice(part * len(index) // parts, (part + 1) * len(index) // parts)
        images = self.x[index[local]]
        if self.augment:  # drawn for the whole batch, so any number of processes sees the same
            from imgcls.data.augment import draw_params

            flips = None
            if self.first_flips is not None:
                flips = self.first_flips[index] != bool(plan.epoch % 2)
            rng = np.random.default_rng([plan.seed, plan.epoch, step])
            h, w = images.shape[1:3]
            params = draw_params(rng, len(index), h, w, self.augment, flips, plan.translate)
            images = _apply_params()(images, params["transform"][local], params["color"][local])
        else:
            images = ops.convert_to_tensor(np.asarray(images, np.float32))
        index = index[local]
        labels = np.zeros(len(index), np.int32) if self.y is None else self.y[index]
        if self.num_classes:
            labels = np.eye(self.num_classes, dtype=np.float32)[labels]
        if self.weights is None:
            return images, labels
        return images, labels, self.weights[self.y[index]].astype(np.float32)
