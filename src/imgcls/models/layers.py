"""imgcls's own Keras layers, defined at module level and registered when imported.

Importing ``imgcls`` (or this module) registers them, so a bundle's ``model.keras`` loads
with plain ``keras.saving.load_model`` in a fresh process, in safe mode.

- :class:`TTAViews` and :class:`ViewAverage` put test-time augmentation and the
  calibration temperature inside the saved inference model, so every consumer (predict,
  evaluate, serve, ONNX, SavedModel, LiteRT) computes the same probabilities.
- :class:`CaffePreprocess` is ResNet50's BGR mean subtraction.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

TTA_MODES = ("none", "flip", "translate", "flip_translate")
LOG_FLOOR = 1e-12  # probabilities are clipped here before the log: a view's 0 is not -inf
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)  # caffe-style preprocessing of ResNet50


def view_weights(mode: str) -> list[float]:
    """The weight of each view :class:`TTAViews` makes for ``mode`` (they sum to 1).

    ``translate`` puts half the weight on the image and a quarter on each of its copies
    shifted one pixel down-right and up-left (reflect-padded), which recovers a little of what
    random-shift training spread out; ``flip`` halves each weight between a view and its mirror.

    Example:
        >>> view_weights("flip_translate")
        [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    """
    if mode not in TTA_MODES:
        raise ValueError(f"`mode` must be one of {TTA_MODES}. Received: mode={mode!r}")
    weights = [0.5, 0.25, 0.25] if "translate" in mode else [1.0]
    return [w / 2 for w in weights for _ in (0, 1)] if "flip" in mode else weights


@keras.saving.register_keras_serializable(package="imgcls")
class TTAViews(keras.layers.Layer):
    """The test-time views of a batch, stacked along the batch axis: ``(N, H, W, C)`` to
    ``(V * N, H, W, C)`` in the order of :func:`view_weights`.

    Example:
        >>> x = keras.ops.ones((2, 8, 8, 3))
        >>> TTAViews("flip_translate")(x).shape
        (12, 8, 8, 3)
    """

    def __init__(self, mode: str = "none", **kwargs: Any):
        super().__init__(**kwargs)
        view_weights(mode)  # validates the mode
        self.mode = mode

    def call(self, x):
        views = [x]
        if "translate" in self.mode:
            h, w = x.shape[1], x.shape[2]
            padded = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
            views = [x, padded[:, :h, :w], padded[:, 2 : h + 2, 2 : w + 2]]
        if "flip" in self.mode:
            views = [v for image in views for v in (image, ops.flip(image, axis=2))]
        return views[0] if len(views) == 1 else ops.concatenate(views, axis=0)

    def compute_output_shape(self, input_shape):
        n = input_shape[0]
        views = len(view_weights(self.mode))
        return (None if n is None else n * views, *input_shape[1:])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="imgcls")
class ViewAverage(keras.layers.Layer):
    """Class probabilities of V stacked views ``(V * N, K)`` to one prediction ``(N, K)``: the
    weighted mean of the views' log-probabilities, divided by the calibration
    ``temperature``, through a softmax. With one view and ``temperature=1`` it is the identity
    (up to float rounding).

    Example:
        >>> p = keras.ops.convert_to_tensor([[0.9, 0.1], [0.7, 0.3]])
        >>> keras.ops.convert_to_numpy(ViewAverage([0.5, 0.5])(p)).round(3).tolist()
        [[0.838, 0.162]]
    """

    def __init__(self, view_weights: list[float] = (1.0,), temperature: float = 1.0, **kwargs: Any):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.view_weights = [float(w) for w in view_weights]
        self.temperature = float(temperature)
        if self.temperature <= 0:
            raise ValueError(f"`temperature` must be positive. Received: {temperature}")

    def call(self, probs):
        v, k = len(self.view_weights), probs.shape[-1]
        logp = ops.log(ops.clip(ops.cast(probs, "float32"), LOG_FLOOR, 1.0))
        logp = ops.reshape(logp, (v, -1, k))
        weights = ops.reshape(ops.convert_to_tensor(self.view_weights, "float32"), (v, 1, 1))
        return ops.softmax(ops.sum(logp * weights, axis=0) / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        n = input_shape[0]
        return (None if n is None else n // len(self.view_weights), input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "view_weights": self.view_weights,
            "temperature": self.temperature,
        }


@keras.saving.register_keras_serializable(package="imgcls")
class CaffePreprocess(keras.layers.Layer):
    """RGB 0..255 to BGR minus the ImageNet channel means (ResNet50's preprocessing).

    Example:
        >>> x = keras.ops.full((1, 2, 2, 3), 128.0)
        >>> keras.ops.convert_to_numpy(CaffePreprocess()(x))[0, 0, 0].round(2).tolist()
        [24.06, 11.22, 4.32]
    """

    def call(self, x):
        bgr = ops.flip(x, axis=-1)
        return bgr - ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=x.dtype)
