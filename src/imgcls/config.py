"""Typed training configuration: defaults < model recipe < config file < command-line flags.

The resolved configuration is saved with every run (``RUN/bundle.json``) so a run can be
repeated, resumed or compared exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.errors import ImgclsError, check

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
AUGMENTATIONS = ("flip", "translate")
TTA_MODES = ("none", "flip", "translate", "flip_translate")  # test-time augmentation choices
MIN_IMAGE_SIDE = 8  # pixels; below this no model here has anything to convolve
MAX_IMAGE_SIDE = 1024  # pixels; larger inputs belong to a different kind of model


@dataclass
class TrainConfig:
    """Everything that decides what a training run does.

    Fields left as ``None`` are filled from the model's recipe (its epochs, batch size and
    learning rate) or from the data (image size, augmentation) by :meth:`resolve`.
    """

    model: str | None = None  # None: "fast" for images up to 64x64, else "classic"
    model_args: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None  # peak learning rate
    image_size: tuple[int, int] | None = None  # (height, width) in pixels
    val_split: float = 0.1
    test_split: float = 0.1
    seed: int = 0
    augment: tuple[str, ...] | None = None  # None: the data source's recommendation
    label_smoothing: float | None = None
    weight_decay: float | None = None
    precision: str = "auto"
    patience: int | None = None  # epochs without val improvement before stopping
    max_time: float | None = None  # minutes of training before stopping cleanly
    checkpoint_every: int | None = None  # steps between mid-epoch checkpoints
    keep_checkpoints: int = 2  # newest checkpoints kept besides the best
    class_weight: str | None = None  # None or "balanced"
    weights: str | None = None  # pretrained weights for application backbones
    deterministic: bool = True  # same seed, same weights on CPU
    tensorboard: bool = False  # write TensorBoard logs to RUN/tensorboard
    tta: str | None = None  # test-time augmentation the bundle asks for; None: the recipe's

    def validate(self) -> TrainConfig:
        """Check every field; raise :class:`ImgclsError` naming the first bad one."""
        _positive_int("epochs", self.epochs, allow_none=True)
        _positive_int("batch_size", self.batch_size, allow_none=True)
        _positive_int("checkpoint_every", self.checkpoint_every, allow_none=True)
        _positive_int("patience", self.patience, allow_none=True)
        _positive_int("keep_checkpoints", self.keep_checkpoints)
        if self.lr is not None:
            check(
                _is_number(self.lr) and 0 < self.lr < 10,
                f"`lr` must be a number in (0, 10). Received: lr={self.lr!r}",
            )
        if self.max_time is not None:
            check(
                _is_number(self.max_time) and self.max_time > 0,
                f"`max_time` must be a positive number of minutes. Received: max_time={self.max_time!r}",
            )
        check_splits(self.val_split, self.test_split)
        if self.image_size is not None:
            size = tuple(self.image_size)
            check(
                len(size) == 2
                and all(isinstance(s, int) and MIN_IMAGE_SIDE <= s <= MAX_IMAGE_SIDE for s in size),
                f"`image_size` must be two integers (height width) between {MIN_IMAGE_SIDE} and "
                f"{MAX_IMAGE_SIDE}. Received: image_size={self.image_size!r}",
            )
            self.image_size = size  # type: ignore[assignment]
        check(
            self.precision in PRECISIONS,
            f"`precision` must be one of {set(PRECISIONS)}. Received: precision={self.precision}",
        )
        if self.augment is not None:
            self.augment = tuple(a for a in self.augment if a and a != "none")
            bad = [a for a in self.augment if a not in AUGMENTATIONS]
            check(
                not bad,
                f"`augment` items must be in {set(AUGMENTATIONS)} (or 'none'). Received: augment={bad[0] if bad else ''}",
            )
        check(
            self.tta is None or self.tta in TTA_MODES,
            f"`tta` must be one of {set(TTA_MODES)}. Received: tta={self.tta!r}",
        )
        check(
            self.class_weight in (None, "balanced"),
            f"`class_weight` must be 'balanced' or unset. Received: class_weight={self.class_weight}",
        )
        for name in ("label_smoothing", "weight_decay"):
            value = getattr(self, name)
            if value is not None:
                check(
                    _is_number(value) and 0 <= value < 1,
                    f"`{name}` must be a number in [0, 1). Received: {name}={value!r}",
                )
        check(
            isinstance(self.seed, int) and self.seed >= 0,
            f"`seed` must be a non-negative integer. Received: seed={self.seed!r}",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-able values."""
        d = dataclasses.asdict(self)
        for key in ("image_size", "augment"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build a config from a dict, refusing keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        check(not unknown, f"Unknown config key(s) {unknown}; known keys are {sorted(known)}")
        d = dict(d)
        for key in ("image_size", "augment"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d).validate()

    def updated(self, **overrides: Any) -> TrainConfig:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        values = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **values).validate()


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into a dict (keys are checked by ``from_dict``)."""
    path = Path(path)
    check(path.is_file(), f"`--config` file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as e:
        raise ImgclsError(
            f"`--config` file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {e}"
        ) from None
    check(isinstance(data, dict), f"`--config` file {path} must hold a table/object of settings")
    return data.get("train", data)


def check_splits(val_split: Any, test_split: Any) -> None:
    """Both fractions in [0, 1) and leaving images to train on; else :class:`ImgclsError`."""
    for name, value in (("val_split", val_split), ("test_split", test_split)):
        check(
            _is_number(value) and 0 <= value < 1,
            f"`{name}` must be a fraction in [0, 1). Received: {name}={value!r}",
        )
    check(
        val_split + test_split < 1,
        "`val_split` + `test_split` must leave images to train on (sum below 1). "
        f"Received: val_split={val_split}, test_split={test_split}",
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"`{name}` must be a positive integer. Received: {name}={value!r}",
    )
