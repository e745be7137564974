"""How big the images of a data set are, and the image size a run picks for them by default.

Small images (digits, CIFAR) train from scratch at their own size. Photos (larger than
:data:`SMALL_MAX_SIDE` a side) train a pretrained backbone at its native
:data:`PRETRAINED_SIDE`, or, with no pretrained weights at hand, a from-scratch network at
:data:`SCRATCH_PHOTO_SIDE`, a size a CPU trains in minutes.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from imgcls.data.sources import ImageSet

SMALL_MAX_SIDE = (
    64  # pixels: up to this the data counts as small images (fast model), above as photos
)
MIN_SIDE = 16  # pixels: small sources (8x8 digits) are upsampled to at least this
PRETRAINED_SIDE = 224  # pixels: the native input of the default pretrained backbone
# pixels: photos trained from scratch. 224 ran at 6-7 images/s on 2 cores; on 320 photos (CIFAR
# pairs upscaled, bench/photos.py) 60 epochs took 175 s at 64, 340 s at 112, and 96 is the
# smallest size that keeps the detail of real photos.
SCRATCH_PHOTO_SIDE = 96
SIZE_SAMPLE = 64  # images whose headers are read to find the typical size


def typical_size(images: ImageSet) -> tuple[int, int]:
    """The (height, width) of a prepared folder's pixel cache, of in-memory pixels, or the most
    common one among a sample of file headers (nothing is decoded)."""
    if images.cache is not None:
        return tuple(int(s) for s in np.load(images.cache, mmap_mode="r").shape[1:3])
    if images.images is not None:
        return tuple(int(s) for s in images.images.shape[1:3])
    from PIL import Image

    sizes: Counter = Counter()
    step = max(1, len(images.paths) // SIZE_SAMPLE)
    for path in images.paths[::step][:SIZE_SAMPLE]:
        try:
            with Image.open(path) as img:
                sizes[(img.height, img.width)] += 1
        except Exception:  # noqa: BLE001 - bad files are reported when decoded
            continue
    return sizes.most_common(1)[0][0] if sizes else (MIN_SIDE, MIN_SIDE)


def is_photo_size(size: tuple[int, int]) -> bool:
    """True for images larger than :data:`SMALL_MAX_SIDE` on their longer side."""
    return max(size) > SMALL_MAX_SIDE


def default_image_size(typical: tuple[int, int], native_side: int | None) -> tuple[int, int]:
    """The training size for data of ``typical`` size: a pretrained backbone's native size
    (``native_side``), the images' own size for small images (at least :data:`MIN_SIDE`), and
    :data:`SCRATCH_PHOTO_SIDE` square for photos trained from scratch."""
    if native_side:
        return native_side, native_side
    if is_photo_size(typical):
        return SCRATCH_PHOTO_SIDE, SCRATCH_PHOTO_SIDE
    return tuple(max(int(s), MIN_SIDE) for s in typical)


def default_cache_size(images: ImageSet) -> tuple[int, int]:
    """The size ``imgcls prepare`` caches pixels at: what ``imgcls train`` picks by default
    (photos at the pretrained backbones' native size)."""
    typical = typical_size(images)
    return default_image_size(typical, PRETRAINED_SIDE if is_photo_size(typical) else None)
