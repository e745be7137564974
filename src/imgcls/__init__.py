"""imgcls: image classification with Keras 3, from a folder of images to a trusted model.

The Python API mirrors the ``imgcls`` command::

    import imgcls
    result = imgcls.train("digits", out="runs/digits")
    predictor = imgcls.load("runs/digits")
    predictor.predict(["some/image.png"])[0].label
"""

from __future__ import annotations

import os
from typing import Any

__version__ = "0.1.0"
__all__ = ["ImgclsError", "TrainConfig", "evaluate", "list_models", "load", "train", "__version__"]

from imgcls.config import TrainConfig  # noqa: E402  (light: no TensorFlow import)
from imgcls.errors import ImgclsError  # noqa: E402


def train(*args: Any, **kwargs: Any):
    """Train a model; see :func:`imgcls.train.trainer.train`."""
    from imgcls.train.trainer import train as _train

    return _train(*args, **kwargs)


def load(run_dir: str | os.PathLike):
    """Load a run for prediction; see :class:`imgcls.predict.Predictor`."""
    from imgcls.predict import Predictor

    return Predictor(run_dir)


def evaluate(*args: Any, **kwargs: Any) -> dict:
    """Evaluate a run on data; see :func:`imgcls.evaluate.evaluate`."""
    from imgcls.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def list_models() -> list[str]:
    """Names of the registered models."""
    from imgcls.models import list_models as _list

    return _list()
