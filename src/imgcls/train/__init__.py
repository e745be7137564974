"""Training: :func:`run_training` trains a recipe end to end and writes a run folder with its
bundle (:func:`imgcls.train` also scores the test split through it)."""

from imgcls.train.api import run_training
from imgcls.train.trainer import TrainedRun

__all__ = ["TrainedRun", "run_training"]
