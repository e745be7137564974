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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import ImgclsError, check
from imgcls.io import atomic_open

EXPLAIN_TOP_K = 5  # classes shown by `imgcls explain`
_BLOCK_NAME = re.compile(
    r"^(.*?block_?\d+)[a-z]?(?:_|$)"
)  # block1_conv2, conv_block3_1, block5a_dwconv


def _conv_types() -> tuple[type, ...]:
    from keras import layers

    return (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)


@dataclass(frozen=True)
class ConvTarget:
    """A convolution whose activations can be read: a top-level layer, or a layer inside a
    nested model (a Keras Applications backbone) whose own output is already pooled."""

    layer: Any
    parent: Any = None

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def resolution(self) -> tuple:
        return tuple(self.layer.output.shape[1:3])


def _has_conv(layer) -> bool:
    import keras

    if isinstance(layer, _conv_types()):
        return True
    return isinstance(layer, keras.Model) and any(_has_conv(inner) for inner in layer.layers)


def _call_tensors(layer) -> tuple[Any, Any]:
    """(input, output) of ``layer``'s first call in the enclosing graph.

    A nested model's own ``input``/``output`` belong to its inner graph; the call node links it to
    the outer one (Keras keeps it in ``_inbound_nodes``).
    """
    nodes = getattr(layer, "_inbound_nodes", None)
    if not nodes:
        return layer.input, layer.output
    node = nodes[0]
    ins, outs = node.input_tensors, node.output_tensors
    return (ins[0] if len(ins) == 1 else ins), (outs[0] if len(outs) == 1 else outs)


def conv_layers(model) -> list[ConvTarget]:
    """The model's convolutions with a 4-D output, in order, looking into nested models whose
    output is pooled."""
    import keras

    found = []
    for layer in model.layers:
        if not _has_conv(layer):
            continue
        if len(layer.output.shape) == 4:
            found.append(ConvTarget(layer))
        elif isinstance(layer, keras.Model):
            found += [
                ConvTarget(inner, layer)
                for inner in layer.layers
                if isinstance(inner, _conv_types()) and len(inner.output.shape) == 4
            ]
    check(
        bool(found),
        f"model {model.name!r} has no convolution layer with a 4-D output; "
        "feature maps and Grad-CAM need a CNN",
    )
    return found


def _block_key(target: ConvTarget) -> tuple:
    named = _BLOCK_NAME.match(target.name)
    return ("name", named.group(1)) if named else ("resolution", target.resolution)


def block_layers(model) -> list[ConvTarget]:
    """The last convolution of each block, in order.

    A block is a run of convolutions whose names share a ``block<N>`` prefix (the convention of
    imgcls and Keras applications), or else a run with one output resolution. Convolutions on a
    pooled summary that a later layer outgrows (squeeze-and-excitation gates) are no block.
    """
    targets = conv_layers(model)
    area = [int(np.prod([d or 0 for d in t.resolution])) for t in targets]
    later_max = np.maximum.accumulate(area[::-1])[::-1].tolist() + [0]
    blocks: list[ConvTarget] = []
    keys: list = []
    for i, target in enumerate(targets):
        if later_max[i + 1] > area[i]:
            continue  # a transient gate, e.g. MobileNetV3's squeeze-excite 1x1 convolutions
        key = (id(target.parent), _block_key(target))
        if keys and keys[-1] == key:
            blocks[-1] = target
        else:
            blocks.append(target)
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
    if isinstance(last, layers.Softmax) or (
        isinstance(last, layers.Activation)
        and getattr(last.activation, "__name__", "") == "softmax"
    ):
        return last.input, True
    return model.outputs[0], False


def _forward(model, targets: list[ConvTarget], with_scores: bool):
    """A function ``x -> ([activations of targets], scores or None)``; all targets share one parent."""
    import keras

    parent = targets[0].parent
    scores = _score_output(model)[0] if with_scores else None
    if parent is None:
        outs = [_call_tensors(t.layer)[1] for t in targets]
        sub = keras.Model(_model_input(model), outs + ([scores] if with_scores else []))

        def run(x):
            values = list(sub(x, training=False))
            return (values[:-1], values[-1]) if with_scores else (values, None)

        return run
    enter, leave = _call_tensors(
        parent
    )  # the backbone's input and pooled output in the outer graph
    before = keras.Model(_model_input(model), enter)
    inside = keras.Model(
        _model_input(parent), [t.layer.output for t in targets] + [parent.outputs[0]]
    )
    after = keras.Model(leave, scores) if with_scores else None

    def run(x):
        values = list(inside(before(x, training=False), training=False))
        return values[:-1], (after(values[-1], training=False) if with_scores else None)

    return run


def _split(model, target: ConvTarget):
    """``(pixels -> activations, activations -> scores)`` for a layer of the outer graph whose
    activations are the only way from the input to the scores; ``None`` when they are not."""
    import keras

    if target.parent is not None:
        return None
    try:
        fmap = _call_tensors(target.layer)[1]
        to_fmap = keras.Model(_model_input(model), fmap)
        from_fmap = keras.Model(fmap, _score_output(model)[0])
    except ValueError:  # a skip connection around the layer: the halves do not exist
        return None
    return (lambda x: to_fmap(x, training=False)), (lambda f: from_fmap(f, training=False))


def grad_cam(
    model, pixels: np.ndarray, class_index: np.ndarray | list[int], target: ConvTarget | None = None
) -> np.ndarray:
    """Grad-CAM heat maps in 0..1, one per image, at the resolution of ``target`` (default: last conv).

    Args:
        model: a Keras model over uint8-range float pixels.
        pixels: ``(N, H, W, 3)`` images as the model takes them.
        class_index: the class to explain for each image.
        target: the convolution whose activations are weighted.

    Returns:
        ``(N, h, w)`` float array; an all-zero map means no positive evidence.
    """
    from keras import ops

    from imgcls import backend

    target = target or conv_layers(model)[-1]
    is_logits = _score_output(model)[1]
    run = _forward(model, [target], with_scores=True)
    x = np.asarray(pixels, np.float32)
    index = np.asarray(class_index, np.int32)
    fmap, grads = backend.activation_gradients(run, x, index, is_logits, _split(model, target))
    if grads is None:
        raise ImgclsError(
            f"Grad-CAM: no gradient flows from the class scores to layer {target.name!r}"
        )
    fmap, grads = ops.cast(fmap, "float32"), ops.cast(grads, "float32")  # mixed precision: 16 bit
    weights = ops.mean(grads, axis=(1, 2), keepdims=True)
    cam = ops.convert_to_numpy(ops.relu(ops.sum(weights * fmap, axis=-1)))
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, cam / np.maximum(peak, 1e-12), 0.0)


def feature_maps(model, pixels: np.ndarray, targets: list[ConvTarget]) -> list[np.ndarray]:
    """The activations of ``targets`` for one image ``(H, W, 3)``, each ``(h, w, channels)``."""
    import keras

    x = np.asarray(pixels, np.float32)[None]
    found: dict[int, np.ndarray] = {}
    for parent in dict.fromkeys(id(t.parent) for t in targets):
        group = [i for i, t in enumerate(targets) if id(t.parent) == parent]
        values, _ = _forward(model, [targets[i] for i in group], with_scores=False)(x)
        for i, v in zip(group, values, strict=True):
            found[i] = np.asarray(keras.ops.convert_to_numpy(v), np.float64)[0]
    return [found[i] for i in range(len(targets))]


def _write_png(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def explain(
    run: str | Path, image: str | Path, out: str | Path, top_k: int = EXPLAIN_TOP_K
) -> dict[str, Any]:
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
    model, classes = predictor.classifier, predictor.classes_
    probs = predictor.predict_pixels(pixels[None])[0]
    best = np.argsort(-probs, kind="stable")[: min(top_k, len(classes))]
    ranked = [{"label": classes[i], "probability": float(probs[i])} for i in best]

    blocks, last = block_layers(model), conv_layers(model)[-1]
    maps = feature_maps(model, pixels, blocks)
    cam = grad_cam(model, pixels[None], [int(best[0])], target=last)[0]
    figures = {"filters.png": plots.filter_grid(first_conv_kernel(model))}
    for i, (layer, fmap) in enumerate(zip(blocks, maps, strict=True)):
        figures[f"feature_maps_{i + 1}_{layer.name}.png"] = plots.feature_map_grid(
            fmap, f"block {i + 1} ({layer.name})"
        )
    figures["gradcam.png"] = _gradcam_figure(
        pixels, cam, f"Grad-CAM for {classes[best[0]]} ({probs[best[0]]:.2f}), layer {last.name}"
    )
    figures["top_k.png"] = plots.top_k_bars(
        [r["label"] for r in ranked], [r["probability"] for r in ranked]
    )
    out = Path(out)
    for name, data in figures.items():
        _write_png(out / name, data)
    result = {
        "run": str(run),
        "image": str(image),
        "top_k": ranked,
        "temperature": predictor.temperature,
        "grad_cam_layer": last.name,
        "blocks": [layer.name for layer in blocks],
        "files": sorted(figures),
    }
    with atomic_open(out / "explain.json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return result


def _gradcam_figure(pixels: np.ndarray, cam: np.ndarray, title: str) -> bytes:
    from imgcls.evaluate import plots

    fig = plots._figure(7.5, 2.8)
    axes = fig.subplots(1, 3)
    panels = (
        ("image", pixels, None),
        ("heat map", cam, "jet"),
        ("overlay", plots.overlay(pixels, cam), None),
    )
    for ax, (name, img, cmap) in zip(axes, panels, strict=True):
        ax.imshow(img, cmap=cmap, interpolation="nearest" if cmap is None else "bilinear")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return plots.to_png(fig)
