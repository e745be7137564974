"""imgcls: image classification with Keras 3, from a folder of images to a trusted model.

The Python API mirrors the ``imgcls`` command::

    import imgcls
    result = imgcls.train("digits", out="runs/digits")
    predictor = imgcls.load("runs/digits")
    predictor.predict(["some/image.png"])[0].label

Importing imgcls does not import Keras or its backend; the first call that needs them does.
imgcls's own Keras layers (test-time views, view averaging, ResNet50's preprocessing) are
registered with Keras as soon as Keras is imported, so a run's ``model.keras`` loads with plain
``keras.saving.load_model`` in any process that imported imgcls.
"""

from __future__ import annotations

__version__ = "0.1.0"

# These imports bind the public functions over the same-named subpackages (imgcls.train,
# imgcls.evaluate), so `imgcls.train(...)` is always the function.
from imgcls._register import register_when_keras_loads
from imgcls.config import TrainConfig
from imgcls.errors import ImgclsError
from imgcls.evaluate import evaluate
from imgcls.evaluate.calibrate import calibrate
from imgcls.evaluate.explain import explain
from imgcls.export import export
from imgcls.models import create_model, list_models
from imgcls.predict import Prediction, Predictor, load
from imgcls.workflow import TrainResult, train

register_when_keras_loads()

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
