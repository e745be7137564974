"""imgcls: image classification with Keras 3, from a folder of images to a trusted model.

The Python API mirrors the ``imgcls`` command::

    import imgcls
    result = imgcls.train("digits", out="runs/digits")
    predictor = imgcls.load("runs/digits")
    predictor.predict(["some/image.png"])[0].label

Importing imgcls does not import TensorFlow; the first call that needs it does.
"""

from __future__ import annotations

__version__ = "0.1.0"

# These imports bind the public functions over the same-named subpackages (imgcls.train,
# imgcls.evaluate), so `imgcls.train(...)` is always the function.
from imgcls.config import TrainConfig
from imgcls.errors import ImgclsError
from imgcls.evaluate import evaluate
from imgcls.evaluate.calibrate import calibrate
from imgcls.evaluate.explain import explain
from imgcls.export import export
from imgcls.models import create_model, list_models
from imgcls.predict import Prediction, Predictor, load
from imgcls.train.trainer import TrainResult, train

__all__ = [
    "ImgclsError",
    "Prediction",
    "Predictor",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "calibrate",
    "create_model",
    "evaluate",
    "explain",
    "export",
    "list_models",
    "load",
    "train",
]
