"""Transfer learning: a Keras Applications backbone with a new classification head.

Each backbone keeps its own preprocessing inside the model (MobileNetV3 and EfficientNet
rescale internally; ResNet50 gets its caffe-style BGR mean subtraction as a layer), so the
model takes 0..255 RGB like every imgcls model. The recipe trains the head with the backbone
frozen for ``freeze_epochs``, then fine-tunes everything at a tenth of the learning rate with
the backbone's BatchNorm kept in inference mode.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgcls.errors import ImgclsError
from imgcls.models import register_model

TRANSFER_RECIPE = {
    "epochs": 10,
    "batch_size": 32,
    "lr": 1e-3,  # AdamW for the head; fine-tuning uses lr * finetune_lr_factor
    "weight_decay": 1e-4,
    "label_smoothing": 0.1,
    "optimizer": "adamw",
    "freeze_epochs": 3,  # epochs training only the head before the backbone is unfrozen
    "finetune_lr_factor": 0.1,
}
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)  # caffe-style preprocessing of ResNet50
# registry name -> (keras.applications attribute, extra constructor arguments, needs caffe preprocessing)
BACKBONES = {
    "mobilenetv3small": ("MobileNetV3Small", {"include_preprocessing": True}, False),
    "efficientnetb0": ("EfficientNetB0", {}, False),
    "resnet50": ("ResNet50", {}, True),
}


def _caffe_layer():
    import keras

    @keras.saving.register_keras_serializable(package="imgcls")
    class CaffePreprocess(keras.layers.Layer):
        """RGB 0..255 to BGR minus the ImageNet channel means (ResNet50's preprocessing)."""

        def call(self, x):
            from keras import ops

            bgr = ops.flip(x, axis=-1)
            return bgr - ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=x.dtype)

    return CaffePreprocess


def build_transfer(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    weights: str | None = "imagenet",
    dropout: float = 0.2,
):
    """A backbone + dropout + dense softmax head.

    Args:
        name: a key of :data:`BACKBONES`.
        weights: ``"imagenet"`` (Keras' download cache), ``"none"``/``None`` (random), or a
            path to a ``.weights.h5`` / ``.h5`` file of the backbone without its top.
    """
    import keras
    from keras import layers

    attr, extra, caffe = BACKBONES[name]
    source = None if weights in (None, "none") else weights
    path = None if source in (None, "imagenet") else Path(os.path.expanduser(source))
    if path is not None and not path.is_file():
        raise ImgclsError(
            f"`weights` must be imagenet, none or an existing weights file. Received: weights={source}"
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
            f"ImageNet weights for {name} are not in Keras' cache (~/.keras/models) and could not be "
            f"downloaded (offline?) [{type(e).__name__}]; pass --weights PATH or --weights none"
        ) from None
    if path is not None:
        try:
            base.load_weights(path)
        except Exception as e:  # noqa: BLE001
            raise ImgclsError(f"cannot load backbone weights from {path}: {str(e)[:200]}") from None
    inputs = keras.Input(input_shape, name="pixels")
    x = _caffe_layer()(name="caffe_preprocess")(inputs) if caffe else inputs
    x = base(x, training=False)  # BatchNorm stays in inference mode, also when fine-tuning
    x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Softmax(dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def _register(name: str) -> None:
    attr = BACKBONES[name][0]

    @register_model(
        name,
        f"Keras Applications {attr} backbone + new head (transfer learning)",
        recipe=TRANSFER_RECIPE,
        min_side=32,
        pretrained=True,
    )
    def build(input_shape, num_classes, weights="imagenet", dropout=0.2):
        return build_transfer(name, input_shape, num_classes, weights=weights, dropout=dropout)


for _name in BACKBONES:
    _register(_name)
