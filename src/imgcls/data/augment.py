"""The one augmentation of every backend: parameters drawn on the host, applied on the device.

Random resized crops, flips, whole-pixel shifts and mild colour jitter. The draws are made with
NumPy from ``(seed, epoch, step)`` (a few numbers per image, so any batch can be rebuilt when a
run resumes, and every backend draws the same); the pixels are moved with ``keras.ops`` on
whatever device and backend runs them, so the same seed gives the same batch on TensorFlow,
JAX and PyTorch (exactly for flips and shifts; crops interpolate, to float rounding).

Border rule: a shift or crop that reaches past the image reads it mirrored *with* the edge
pixel repeated (``d c b a | a b c d | d c b a``, NumPy's ``symmetric``, Keras'
``fill_mode="reflect"``).

Example:
    >>> rng = np.random.default_rng([0, 1, 2])
    >>> params = draw_params(rng, 4, 96, 96, ("flip", "crop", "color"))
    >>> params["transform"].shape, params["color"].shape
    ((4, 8), (4, 3))
"""

from __future__ import annotations

import math

import numpy as np

PHOTO_AUGMENT = ("flip", "crop", "color")  # what suits photos (Inception-style crops, mirror)
CROP_SCALE = (
    0.35,
    1.0,
)  # share of the image area a crop keeps; below ~1/3 the object is often lost
CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratios of the crop box (Inception's)
CROP_TRIES = 10  # boxes drawn before falling back to the largest centred box of a legal ratio
JITTER = 0.2  # brightness, contrast and saturation each scaled by a factor in [0.8, 1.2]
GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights


def draw_params(
    rng: np.random.Generator,
    n: int,
    height: int,
    width: int,
    augment: tuple[str, ...],
    flips: np.ndarray | None = None,
    translate: int | None = None,
) -> dict[str, np.ndarray]:
    """Random crop boxes, flips, shifts and colour factors for ``n`` images of ``height`` x
    ``width``.

    Returns ``{"transform": (n, 8) float32, "color": (n, 3) float32}``: one projective
    transform row per image (see ``keras.ops.image.affine_transform``) mapping each output
    pixel into the source, and brightness, contrast and saturation factors (1 = unchanged).
    ``flips`` (a boolean per image) replaces the coin toss for mirroring; ``translate`` is the
    largest shift in whole pixels for ``"translate"`` (default: an eighth of the shorter side).
    """
    boxes = np.zeros((n, 4))  # y0, x0, crop height, crop width
    boxes[:, 2:] = (height, width)
    if "crop" in augment:
        for i in range(n):
            boxes[i] = _crop_box(rng, height, width)
    if flips is None:
        flips = rng.random(n) < 0.5 if "flip" in augment else np.zeros(n, dtype=bool)
    y0, x0, ch, cw = boxes.T
    sx, sy = cw / width, ch / height  # source pixels per output pixel
    transform = np.zeros((n, 8), dtype=np.float32)
    # Pixel centres line up: output x maps to x0 + (x + 0.5) * sx - 0.5 (mirrored: W - x).
    transform[:, 0] = np.where(flips, -sx, sx)
    transform[:, 2] = np.where(flips, x0 + (width - 0.5) * sx - 0.5, x0 + 0.5 * sx - 0.5)
    transform[:, 4] = sy
    transform[:, 5] = y0 + 0.5 * sy - 0.5
    if "translate" in augment:
        pad = translate or max(1, min(height, width) // 8)
        transform[:, [5, 2]] += rng.integers(-pad, pad + 1, (n, 2))
    color = np.ones((n, 3), dtype=np.float32)
    if "color" in augment:
        color[:] = rng.uniform(1 - JITTER, 1 + JITTER, (n, 3))
    return {"transform": transform, "color": color}


def _crop_box(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An Inception-style crop: area share in CROP_SCALE, aspect ratio in CROP_RATIO."""
    area = height * width
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw, ch = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if 1 <= cw <= width and 1 <= ch <= height:
            return np.array(
                [rng.uniform(0, height - ch), rng.uniform(0, width - cw), ch, cw], dtype=np.float64
            )
    ratio = min(max(width / height, CROP_RATIO[0]), CROP_RATIO[1])
    cw, ch = (height * ratio, height) if width / height > ratio else (width, width / ratio)
    return np.array([(height - ch) / 2, (width - cw) / 2, ch, cw], dtype=np.float64)


def apply_params(images, transform, color=None, resample: bool = True):
    """Crop, resize, mirror, shift and colour-jitter a batch of 0..255 ``images`` as
    :func:`draw_params` described; returns float32 pixels in 0..255 (``keras.ops``, any backend).

    Args:
        images: ``(N, H, W, 3)`` pixels.
        transform: ``(N, 8)`` projective transforms, output pixel -> source pixel.
        color: ``(N, 3)`` brightness, contrast and saturation factors; ``None`` leaves colour be.
        resample: interpolate (crops). ``False`` when the transforms are flips and whole-pixel
            shifts only: every pixel is then copied from its source by one gather, exactly.
    """
    from keras import ops

    x = ops.cast(images, "float32")
    if resample:
        x = ops.image.affine_transform(
            x, ops.cast(transform, "float32"), interpolation="bilinear", fill_mode="reflect"
        )
    else:
        x = move_pixels(x, transform)
    if color is None:
        return x
    color = ops.cast(color, "float32")
    brightness, contrast, saturation = (color[:, i, None, None, None] for i in range(3))
    x = x * brightness
    gray = ops.sum(x * ops.convert_to_tensor(GRAY, "float32"), axis=-1, keepdims=True)
    mean = ops.mean(gray, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * contrast + mean
    gray = (gray - mean) * contrast + mean
    x = (x - gray) * saturation + gray
    return ops.clip(x, 0.0, 255.0)


def move_pixels(images, transform):
    """``images`` under ``transform``s that flip and shift by whole pixels (scale +-1, integer
    offsets): one gather of source pixels, mirrored at the border by the module's rule. Equal
    to bilinear ``affine_transform`` for such transforms, and as exact on every backend."""
    from keras import ops

    n, h, w, c = images.shape
    t = ops.cast(transform, "float32")
    rows = t[:, 4:5] * ops.arange(h, dtype="float32")[None, :] + t[:, 5:6]
    cols = t[:, 0:1] * ops.arange(w, dtype="float32")[None, :] + t[:, 2:3]
    rows = _mirror(ops.cast(ops.round(rows), "int32"), h)
    cols = _mirror(ops.cast(ops.round(cols), "int32"), w)
    first = ops.arange(n, dtype="int32")[:, None, None] * (h * w)
    flat = first + rows[:, :, None] * w + cols[:, None, :]
    moved = ops.take(ops.reshape(images, (n * h * w, c)), ops.reshape(flat, (-1,)), axis=0)
    return ops.reshape(moved, (n, h, w, c))


def _mirror(index, size: int):
    """Indices up to ``size`` outside ``[0, size)`` mirrored back, the edge repeated."""
    from keras import ops

    index = ops.where(index < 0, -1 - index, index)
    return ops.where(index >= size, 2 * size - 1 - index, index)
