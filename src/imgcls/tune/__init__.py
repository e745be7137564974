"""``imgcls tune``: search training settings on the validation split, test once (see
:mod:`imgcls.tune.search`)."""

from imgcls.tune.search import tune
from imgcls.tune.settings import ALGORITHMS, FINALS, TuneSettings

__all__ = ["ALGORITHMS", "FINALS", "TuneSettings", "tune"]
