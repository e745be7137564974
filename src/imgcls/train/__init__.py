"""Training: :func:`train` runs a recipe end to end and writes a run folder."""

from imgcls.train.api import TrainResult, train

__all__ = ["TrainResult", "train"]
