"""``imgcls tune``: search training settings on the validation split, test once (see
:mod:`imgcls.tune.search`)."""

from imgcls.tune.search import ALGORITHMS, FINALS, TuneSettings, tune

__all__ = ["ALGORITHMS", "FINALS", "TuneSettings", "tune"]
