"""What a CNN sees: first-layer filters, feature maps per block, Grad-CAM and top-k classes.

Works for any registered model: convolution layers are found by type (``Conv2D``,
``DepthwiseConv2D``, ``SeparableConv2D``, or a nested model that contains them), a "block" is
a run of convolutions with the same output resolution, and Grad-CAM uses the last one.
Grad-CAM (Selvaraju et al., 2017) differentiates the class score before the softmax: the
input of a final ``Softmax`` layer (the classic model's ``logits``), else ``log`` of the
probabilities, which has the same gradient up to a per-image constant.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import ImgclsError, check
from imgcls.io import atomic_open

EXPLAIN_TOP_K = 5  # classes shown by `imgcls explain`
_BLOCK_NAME = re.compile(r"^(.*?block_?\d+)[a-z]?(?:_|$)")  # block1_conv2, conv_block3_1, block5a_dwconv


def _conv_types() -> tuple[type, ...]:
    from keras import layers

    return (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)


def _has_conv(layer) -> bool:
    import keras

    if isinstance(layer, _conv_types()):
        return True
    return isinstance(layer, keras.Model) and any(_has_conv(inner) for inner in layer.layers)


def conv_layers(model) -> list:
    """The model's top-level layers that convolve (or nested models that do), in order."""
    found = [layer for layer in model.layers if _has_conv(layer) and len(layer.output.shape) == 4]
    check(bool(found), f"model {model.name!r} has no convolution layer with a 4-D output; "
                       "feature maps and Grad-CAM need a CNN")
    return found


def _block_key(layer) -> tuple:
    named = _BLOCK_NAME.match(layer.name)
    return ("name", named.group(1)) if named else ("resolution", tuple(layer.output.shape[1:3]))


def block_layers(model) -> list:
    """The last convolution of each block, in order.

    A block is a run of convolutions whose names share a ``block<N>`` prefix (the convention of
    imgcls and Keras applications), or else a run with one output resolution.
    """
    blocks: list = []
    keys: list = []
    for layer in conv_layers(model):
        key = _block_key(layer)
        if keys and keys[-1] == key:
            blocks[-1] = layer
        else:
            blocks.append(layer)
            keys.append(key)
    return blocks


def first_conv_kernel(model) -> np.ndarray:
    """The kernel ``(kh, kw, in, out)`` of the first convolution, looking inside nested models."""
    import keras

    for layer in model.layers:
        if isinstance(layer, _conv_types()):
            kernel = layer.depthwise_kernel if hasattr(layer, "depthwise_kernel") else layer.kernel
            return np.asarray(keras.ops.convert_to_numpy(kernel), np.float64)
        if isinstance(layer, keras.Model) and _has_conv(layer):
            return first_conv_kernel(layer)
    raise ImgclsError(f"model {model.name!r} has no convolution layer")


def _model_input(model):
    """The input tensor(s) as the model was built with them (a single tensor for one input)."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def _score_output(model) -> tuple[Any, bool]:
    """(tensor, is_logits): the pre-softmax scores if the model exposes them, else its probabilities."""
    from keras import layers

    names = [layer.name for layer in model.layers]
    if "logits" in names:
        return model.get_layer("logits").output, True
    last = model.layers[-1]
    if isinstance(last, layers.Softmax) or (isinstance(last, layers.Activation)
                                             and getattr(last.activation, "__name__", "") == "softmax"):
        return last.input, True
    return model.outputs[0], False


def grad_cam(model, pixels: np.ndarray, class_index: np.ndarray | list[int], layer=None) -> np.ndarray:
    """Grad-CAM heat maps in 0..1, one per image, at the resolution of ``layer`` (default: last conv).

    Args:
        model: a Keras model over uint8-range float pixels.
        pixels: ``(N, H, W, 3)`` images as the model takes them.
        class_index: the class to explain for each image.
        layer: the convolution layer whose activations are weighted.

    Returns:
        ``(N, h, w)`` float array; an all-zero map means no positive evidence.
    """
    import keras
    import tensorflow as tf

    layer = layer or conv_layers(model)[-1]
    scores, is_logits = _score_output(model)
    sub = keras.Model(_model_input(model), [layer.output, scores])
    x = tf.convert_to_tensor(np.asarray(pixels, np.float32))
    index = tf.convert_to_tensor(np.asarray(class_index, np.int32))
    with tf.GradientTape() as tape:
        fmap, out = sub(x, training=False)
        out = tf.cast(out, tf.float32)
        if not is_logits:
            out = tf.math.log(tf.maximum(out, 1e-12))
        target = tf.gather(out, index, batch_dims=1)
    grads = tape.gradient(target, fmap)
    if grads is None:
        raise ImgclsError(f"Grad-CAM: no gradient flows from the class scores to layer {layer.name!r}")
    fmap, grads = tf.cast(fmap, tf.float32), tf.cast(grads, tf.float32)  # mixed precision runs in 16 bits
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1)).numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, cam / np.maximum(peak, 1e-12), 0.0)


def feature_maps(model, pixels: np.ndarray, layers: list) -> list[np.ndarray]:
    """The outputs of ``layers`` for one image ``(H, W, 3)``, each ``(h, w, channels)``."""
    import keras

    sub = keras.Model(_model_input(model), [layer.output for layer in layers])
    outs = sub(np.asarray(pixels, np.float32)[None], training=False)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    return [np.asarray(keras.ops.convert_to_numpy(o), np.float64)[0] for o in outs]


def _write_png(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def explain(run: str | Path, image: str | Path, out: str | Path, top_k: int = EXPLAIN_TOP_K) -> dict[str, Any]:
    """Write pictures of what RUN's model sees in IMAGE into ``out``.

    Files: ``filters.png`` (first-layer filters), ``feature_maps_<i>_<layer>.png`` per
    convolution block, ``gradcam.png`` (image, heat map for the top class, overlay),
    ``top_k.png`` and ``explain.json`` (the top-k classes and the file list).

    Args:
        run: a run folder written by ``imgcls train``.
        image: an image file.
        out: folder to write into (created if needed).
        top_k: classes listed.

    Returns:
        The content of ``explain.json``.

    Example:
        >>> imgcls.explain("runs/digits", "seven.png", out="explain/")["top_k"][0]   # doctest: +SKIP
        {'label': '7', 'probability': 0.98}
    """
    from imgcls.data.decode import DecodeError
    from imgcls.evaluate import plots
    from imgcls.predict import Predictor

    check(top_k >= 1, f"`top_k` must be a positive integer. Received: top_k={top_k}")
    check(Path(image).is_file(), f"IMAGE not found: {image}")
    predictor = Predictor(run)
    try:
        pixels = predictor.decode(str(image))
    except DecodeError as e:
        raise ImgclsError(f"IMAGE {image} cannot be read: {e.kind}: {e.detail}") from None
    model, classes = predictor.model, predictor.classes_
    probs = predictor.predict_pixels(pixels[None])[0]
    best = np.argsort(-probs, kind="stable")[:min(top_k, len(classes))]
    ranked = [{"label": classes[i], "probability": float(probs[i])} for i in best]

    blocks = block_layers(model)
    maps = feature_maps(model, pixels, blocks)
    cam = grad_cam(model, pixels[None], [int(best[0])], layer=conv_layers(model)[-1])[0]
    figures = {"filters.png": plots.filter_grid(first_conv_kernel(model))}
    for i, (layer, fmap) in enumerate(zip(blocks, maps, strict=True)):
        figures[f"feature_maps_{i + 1}_{layer.name}.png"] = plots.feature_map_grid(fmap, f"block {i + 1} ({layer.name})")
    figures["gradcam.png"] = _gradcam_figure(pixels, cam, f"Grad-CAM for {classes[best[0]]} "
                                                          f"({probs[best[0]]:.2f}), layer {conv_layers(model)[-1].name}")
    figures["top_k.png"] = plots.top_k_bars([r["label"] for r in ranked], [r["probability"] for r in ranked])
    out = Path(out)
    for name, data in figures.items():
        _write_png(out / name, data)
    result = {"run": str(run), "image": str(image), "top_k": ranked, "temperature": predictor.temperature,
              "grad_cam_layer": conv_layers(model)[-1].name, "blocks": [layer.name for layer in blocks],
              "files": sorted(figures)}
    with atomic_open(out / "explain.json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return result


def _gradcam_figure(pixels: np.ndarray, cam: np.ndarray, title: str) -> bytes:
    from imgcls.evaluate import plots

    fig = plots._figure(7.5, 2.8)
    axes = fig.subplots(1, 3)
    panels = (("image", pixels, None), ("heat map", cam, "jet"), ("overlay", plots.overlay(pixels, cam), None))
    for ax, (name, img, cmap) in zip(axes, panels, strict=True):
        ax.imshow(img, cmap=cmap, interpolation="nearest" if cmap is None else "bilinear")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return plots.to_png(fig)
