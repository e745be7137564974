"""Decoded pixels in memory, fed to the model one epoch at a time, augmented on the device.

Images are decoded once (:func:`decode_images`), so no epoch decodes a JPEG again. The order
of each epoch and every random augmentation are pure functions of ``(seed, epoch, step)``
(:class:`EpochPlan`): resuming at any step of any epoch replays exactly the batches an
uninterrupted run would see. A batch is gathered and its augmentation drawn on the host
(:meth:`EpochPlan.host_batch`), then applied by :mod:`imgcls.data.augment` on the device;
``tf.data`` (TensorFlow) or a ``keras.utils.PyDataset`` (JAX, PyTorch) only feed it.
"""

from __future__ import annotations

import atexit
import functools
import os
import queue
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from imgcls.data.augment import apply_params, draw_params
from imgcls.data.cache import Decoded, DiskRows, cached_pixels, in_memory_if_small
from imgcls.data.decode import resize_array
from imgcls.data.sources import ImageSet

# Batches gathered in parallel and held ready ahead of the model. Fixed instead of AUTOTUNE:
# with tf.data's autotuning on (TF 2.21), deleting a used-up iterator waits for the tuning
# thread's next wake-up, which stalled the end of an 80-second CIFAR-10 epoch by ~34 s.
PARALLEL_BATCHES = 2
# Training batches a PyTorch feeder prepares ahead on a thread of its own (:class:`_Prefetch`).
# Keras hands each step's logs to our per-step callbacks, which waits for the step to finish,
# so without it the device idled while the main thread gathered, moved and augmented the
# next batch ("data wait" in history.csv; the issue measured PyTorch on an H200 starved).
PREFETCH_BATCHES = 2


def decode_images(images: ImageSet, size: tuple[int, int], workers: int | None = None) -> Decoded:
    """Decode and resize every image with the shared decoder, once per folder and size.

    Images from a folder written by ``imgcls prepare`` whose pixel cache holds ``size`` are
    read from that cache; built-in sets are resized in memory; files are decoded on every core
    into the disk cache of :mod:`imgcls.data.cache`, which the next run on the same files and
    size reads instead of decoding.

    Args:
        images: the set to decode.
        size: ``(height, width)``.
        workers: decoding processes; default: every core.

    Returns:
        A :class:`~imgcls.data.cache.Decoded`: ``(pixels, ok, issues, dhash)``, ``dhash``
        ``None`` unless the files were decoded through the disk cache.
    """
    cached = _from_cache(images, size)
    if cached is not None:
        return Decoded(cached, np.ones(len(images), dtype=bool), [])
    if images.images is not None:
        pixels = images.images
        if pixels.shape[1:3] != tuple(size) or pixels.shape[-1] != 3:
            pixels = resize_array(pixels, size)
        return Decoded(pixels, np.ones(len(images), dtype=bool), [])
    return cached_pixels(images.paths, tuple(size), workers)


def _from_cache(images: ImageSet, size: tuple[int, int]) -> np.ndarray | DiskRows | None:
    """The rows of a prepared folder's pixel cache when it holds ``size``, in memory or (a
    large set) read when asked for, as the shared pixel cache's; else ``None``."""
    if images.cache is None or images.cache_rows is None or not os.path.isfile(images.cache):
        return None
    cache = np.load(images.cache, mmap_mode="r")
    rows = images.cache_rows
    if cache.shape[1:] != (size[0], size[1], 3) or (len(rows) and rows.max() >= len(cache)):
        return None
    if cache.dtype != np.uint8 or not cache.flags.c_contiguous:  # not one `prepare` writes
        return np.asarray(cache[rows])
    return in_memory_if_small(DiskRows(images.cache, cache.shape[1:], rows, offset=cache.offset))


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

    def params(
        self, index: np.ndarray, step: int, image_hw: tuple[int, int], first_flips=None
    ) -> dict[str, np.ndarray]:
        """The augmentation of step ``step``'s batch of images ``index`` (see
        :func:`~imgcls.data.augment.draw_params`); ``first_flips`` is :meth:`first_flips`."""
        flips = None if first_flips is None else first_flips[index] != bool(self.epoch % 2)
        rng = np.random.default_rng([self.seed, self.epoch, int(step)])
        return draw_params(rng, len(index), *image_hw, self.augment, flips, self.translate)


@functools.cache
def augmenter(augment: tuple[str, ...]):
    """``(images, transform, color) -> float32 pixels``: :func:`~imgcls.data.augment.apply_params`
    for ``augment``, compiled for the device where that pays (once per process)."""
    from imgcls import backend

    fn = functools.partial(apply_params, resample="crop" in augment)
    if "color" not in augment:
        fn = functools.partial(_without_color, fn)
    return backend.device_function(fn)


def _without_color(apply, images, transform, color):
    return apply(images, transform)


class _Feeder:
    """What both feeders share: a batch's arrays gathered (and its augmentation drawn) on the
    host, and the augmentation applied on the device."""

    def __init__(self, x, y, plan: EpochPlan, sample_weight, num_classes):
        self.x, self.y, self.plan = x, y, plan
        self.augment = tuple(plan.augment) if x.ndim == 4 else ()  # features are not augmented
        self.first_flips = plan.first_flips(len(x))
        self.class_weight = sample_weight
        self.eye = None if not num_classes else np.eye(num_classes, dtype=np.float32)

    def host_batch(self, index: np.ndarray, step: int, local=slice(None)) -> tuple:
        """``(pixels, labels, transform, color)`` of the images ``index`` at ``step``; the
        augmentation is drawn for the whole batch, then ``local`` (a process's slice) taken."""
        images = self.x[index[local]]
        labels = np.zeros(len(images), np.int32) if self.y is None else self.y[index[local]]
        if not self.augment:
            return images, labels, None, None
        p = self.plan.params(index, step, self.x.shape[1:3], self.first_flips)
        return images, labels, p["transform"][local], p["color"][local]

    def on_device(self, images, transform, color):
        from keras import ops

        if self.augment:
            return augmenter(self.augment)(images, transform, color)
        return ops.cast(images, "float32") if self.x.ndim == 4 else images

    def targets(self, labels):
        """One-hot labels (with ``num_classes``) and the sample weights of their classes."""
        weights = None if self.class_weight is None else self.class_weight[labels]
        return (labels if self.eye is None else self.eye[labels]), weights


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
    :func:`batches` sequence. Both draw and apply the same augmentation.
    """
    import keras

    if keras.config.backend() != "tensorflow":
        ahead = PREFETCH_BATCHES if keras.config.backend() == "torch" else 0
        return batches(x, y, plan, sample_weight, num_classes, prefetch=ahead)
    import tensorflow as tf

    feeder = _Feeder(x, y, plan, sample_weight, num_classes)
    order = plan.order(len(x))
    steps, bs = order.shape
    ds = tf.data.Dataset.from_tensor_slices(
        (order[plan.skip_steps :], np.arange(plan.skip_steps, steps, dtype=np.int64))
    )
    item_shape = tuple(x.shape[1:])

    def host(index, step):
        images, labels, transform, color = feeder.host_batch(index, int(step))
        one_hot, weights = feeder.targets(labels)
        out = [images, one_hot.astype(np.float32) if num_classes else labels]
        out += [] if transform is None else [transform, color]
        return out + ([] if weights is None else [weights.astype(np.float32)])

    dtypes = [tf.as_dtype(x.dtype), tf.float32 if num_classes else tf.int32]
    dtypes += [tf.float32, tf.float32] if feeder.augment else []
    dtypes += [] if sample_weight is None else [tf.float32]

    def gather(index, step):
        out = tf.numpy_function(host, [index, step], dtypes, stateful=False)
        images = tf.ensure_shape(out[0], (bs, *item_shape))
        labels = tf.ensure_shape(out[1], (bs, num_classes) if num_classes else (bs,))
        transform = color = None
        if feeder.augment:
            transform, color = tf.ensure_shape(out[2], (bs, 8)), tf.ensure_shape(out[3], (bs, 3))
        images = feeder.on_device(images, transform, color)
        if sample_weight is None:
            return images, labels
        return images, labels, tf.ensure_shape(out[-1], (bs,))

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


def batches(
    x: np.ndarray,
    y: np.ndarray | None,
    plan: EpochPlan,
    sample_weight: np.ndarray | None = None,
    num_classes: int | None = None,
    ordered: bool = False,
    prefetch: int = 0,
):
    """One epoch's batches for the JAX and PyTorch backends: a ``keras.utils.PyDataset``.

    Batch ``i`` is step ``plan.skip_steps + i``; its images are gathered on the host and
    augmented with ``keras.ops`` (:func:`imgcls.data.augment.apply_params`) on the backend's
    device, from parameters drawn with ``(seed, epoch, step)``, so a resumed run sees the same
    batches. With ``plan.shard=(i, n)`` process ``i`` gets its slice of every batch (a batch
    that does not split evenly loses its last images). ``ordered=True`` batches every image in
    order, the last batch possibly smaller (evaluation). ``prefetch``: batches made ahead, in
    step order, on a thread of their own (:class:`_Prefetch`; the same batches, since each is a
    function of its step). Other arguments as :func:`train_dataset`'s.
    """
    return _batches_class()(x, y, plan, sample_weight, num_classes, ordered, prefetch)


@functools.cache
def _batches_class():
    import keras

    return type("Batches", (_BatchesMixin, keras.utils.PyDataset), {})


class _BatchesMixin:
    def __init__(self, x, y, plan: EpochPlan, sample_weight, num_classes, ordered: bool,
                 prefetch: int = 0):  # fmt: skip
        # No Keras worker threads: with two, a resumed JAX run saw other batches than an
        # uninterrupted one (same weights, different losses from the first step). `prefetch`
        # makes batches ahead in step order on one thread instead (:class:`_Prefetch`).
        super().__init__(workers=0, use_multiprocessing=False)
        n, bs = len(x), plan.batch_size
        self.plan = plan
        self.feeder = _Feeder(x, y, plan, sample_weight, num_classes)
        if ordered:
            self.batches = [np.arange(i, min(i + bs, n)) for i in range(0, n, bs)]
        else:
            self.batches = list(plan.order(n))
        parts = plan.shard[1]  # (process, processes): this process feeds its slice of a batch
        if parts > 1:  # every process must get an equal slice: a last, smaller batch (in
            # evaluation) loses at most parts - 1 images
            self.batches = [b[: len(b) - len(b) % parts] for b in self.batches if len(b) >= parts]
        self.prefetch = (
            _Prefetch(self.make, len(self), prefetch) if prefetch and len(self) > 1 else None
        )

    def __len__(self) -> int:
        return len(self.batches) - self.plan.skip_steps

    def __getitem__(self, i: int):
        return self.make(i) if self.prefetch is None else self.prefetch.take(i)

    def make(self, i: int):
        """Batch ``i`` (step ``plan.skip_steps + i``): gathered, augmented, its targets."""
        step = self.plan.skip_steps + i
        index = self.batches[step]
        part, parts = self.plan.shard
        local = slice(part * len(index) // parts, (part + 1) * len(index) // parts)
        images, labels, transform, color = self.feeder.host_batch(index, step, local)
        images = self.feeder.on_device(images, transform, color)
        labels, weights = self.feeder.targets(labels)
        if weights is None:
            return images, labels
        return images, labels, weights.astype(np.float32)


class _Prefetch:
    """Items ``make(0)``, ``make(1)``, ... made up to ``depth`` ahead on a daemon thread.

    :meth:`take` hands item ``i`` over when asked in order (the last one again if asked twice);
    asked out of order it stops the thread and makes the item itself, so a reader that jumps
    gets what ``make`` gives, only not ahead. An error in ``make`` is raised by :meth:`take` of
    that item. The thread ends after the last item, on :meth:`close`, or once the owner of
    ``make`` (a bound method, held weakly) is gone: a reader that stops early (a time budget,
    Ctrl-C) leaves no thread behind.
    """

    def __init__(self, make, n: int, depth: int):
        self.make = weakref.WeakMethod(make)  # no cycle: the owner is dropped when unused
        self.ready: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.next, self.last = 0, None
        args = (self.make, n, self.ready, self.stop)
        self.thread = threading.Thread(target=_make_ahead, args=args, daemon=True,
                                       name="imgcls-prefetch")  # fmt: skip
        for done in [t for t in _RUNNING if not t.is_alive()]:
            del _RUNNING[done]
        _RUNNING[self.thread] = self.stop
        self.thread.start()

    def take(self, i: int):
        """Item ``i``: the thread's, when ``i`` is the next (or the last) one."""
        if self.last is not None and self.last[0] == i:
            return self.last[1]
        if i != self.next or self.stop.is_set():
            self.close()
            return self.make()(i)
        index, item, error = self.ready.get()
        self.next = index + 1
        if error is not None:
            self.close()
            raise error
        self.last = (index, item)
        return item

    def close(self) -> None:
        """Stop making items (the thread exits within :data:`_POLL_S`)."""
        self.stop.set()

    def __del__(self) -> None:
        self.stop.set()


_POLL_S = 0.2  # how often a waiting prefetch thread checks whether it is still wanted
_RUNNING: dict = {}  # prefetch thread -> its stop event


@atexit.register
def _stop_all() -> None:
    """At exit, stop every prefetch thread and wait for the batch it is making: a process that
    exited while one was inside a PyTorch op aborted ("terminate called without an active
    exception", exit status -6) after its work was done."""
    for stop in list(_RUNNING.values()):
        stop.set()
    for thread in list(_RUNNING):
        thread.join(timeout=60)


def _make_ahead(make_ref, n: int, ready: queue.Queue, stop: threading.Event) -> None:
    """:class:`_Prefetch`'s thread: holds ``make``'s owner only while making an item."""
    for i in range(n):
        make = make_ref()
        if make is None:
            return
        try:
            item = (i, make(i), None)
        except BaseException as e:  # noqa: BLE001 - handed to the reader by take()
            item = (i, None, e)
        del make
        while True:
            if stop.is_set() or make_ref() is None:
                return
            try:
                ready.put(item, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        if item[2] is not None:
            return
