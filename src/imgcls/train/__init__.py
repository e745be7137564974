"""Training: :func:`train` runs a recipe end to end and writes a run folder."""

from imgcls.train.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
