"""Typed settings and their validation: what a run, a search or a preparation is asked to do.

:class:`TrainConfig` (precedence: defaults < the model's recipe < a config file < command-line
flags; :func:`imgcls.train.resolve.resolve` fills what is left open), and
:class:`SplitSettings`, the field group that ``train``, ``tune`` and ``prepare`` share. The
command-line flags are generated from these fields (their type, ``help`` and ``choices``).
This module imports nothing of imgcls but its errors and io: every later stage may read it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.errors import check

BACKENDS = ("tensorflow", "jax", "torch")  # the Keras backends imgcls runs on
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
AUGMENTATIONS = ("flip", "translate", "crop", "color")
TTA_MODES = ("none", "flip", "translate", "flip_translate")  # test-time augmentation choices
MIN_IMAGE_SIDE = 8  # pixels; below this no model here has anything to convolve
MAX_IMAGE_SIDE = 1024  # pixels; larger inputs belong to a different kind of model


def _opt(help: str, **extra: Any) -> Any:
    """A field defaulting to ``None`` (filled when the config is resolved) with its CLI help."""
    return field(default=None, metadata={"help": help, **extra})


@dataclass
class SplitSettings:
    """Which labels count and how images are split into train, validation and test, and the
    seed: the one definition that ``imgcls train``, ``tune`` and ``prepare`` share (a folder
    with its own val/ or test/ keeps it; the fractions then carve only what is missing)."""

    val_split: float = field(default=0.1, metadata={"help": "fraction for validation"})
    test_split: float = field(default=0.1, metadata={"help": "fraction for test"})
    seed: int = field(
        default=0, metadata={"help": "seed of the split and of everything random after it"}
    )
    corrections: str | None = _opt(
        "decisions of `imgcls review` to apply to DATA (a folder or CSV manifest); default: "
        "DATA/.imgcls/corrections.csv when DATA is a folder that has one",
        metavar="CSV",
    )

    def validate_split(self) -> None:
        """Both fractions in [0, 1) leaving images to train on, and a non-negative seed."""
        check_splits(self.val_split, self.test_split)
        check(
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
            f"`seed` must be a non-negative integer. Received: seed={self.seed!r}",
        )


@dataclass
class TrainConfig(SplitSettings):
    """Everything that decides what a training run does.

    Precedence: these defaults < the model's recipe < a config file < command-line flags.
    Fields left as ``None`` are filled from the model's recipe (epochs, batch size, learning
    rate, ...) or from the data (model, image size, augmentation) when the run resolves its
    config (:func:`imgcls.train.resolve.resolve`). The ``imgcls train`` flags are generated
    from these fields and their ``help``.
    """

    model: str | None = _opt(
        "registered model (see `imgcls models`); default: fast up to 64x64, a pretrained "
        "backbone for photos (classic from scratch if no weights are at hand)"
    )
    model_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "model argument, value parsed as JSON, e.g. 'filters=[32,64]'",
            "flag": "--model-arg",
        },
    )
    epochs: int | None = _opt("training epochs (pretrained: head epochs + finetune_epochs)")
    batch_size: int | None = _opt("images per step")
    lr: float | None = _opt("peak learning rate")
    image_size: tuple[int, int] | None = _opt("(height, width) the images are resized to")
    split_file: str | None = _opt(
        "split.csv (id,label,split) giving each image's split instead of drawing one; images "
        "it does not name are left out",
        metavar="CSV",
    )
    init_from: str | None = _opt(
        "start from the weights of this run's model (same model, image size and classes): to "
        "train it longer or on more data; the optimizer and schedule start afresh",
        metavar="RUN",
    )
    augment: tuple[str, ...] | None = _opt(
        "comma list of flip,translate,crop,color, or none (default: suits the data)"
    )
    label_smoothing: float | None = _opt("label smoothing of the loss")
    weight_decay: float | None = _opt("decoupled weight decay")
    precision: str = field(
        default="auto", metadata={"help": "numeric precision", "choices": PRECISIONS}
    )
    patience: int | None = _opt("stop after this many epochs without val_loss improvement")
    max_time: float | None = _opt("minutes of training before stopping cleanly", metavar="MIN")
    checkpoint_every: int | None = _opt("also checkpoint every N steps", metavar="N")
    keep_checkpoints: int = field(
        default=2, metadata={"help": "newest checkpoints kept (the best is kept too)"}
    )
    class_weight: str | None = _opt("weight classes inversely to their size", choices=("balanced",))
    weights: str | None = _opt("pretrained backbones: imagenet, none, or a weights file")
    finetune_epochs: int | None = _opt(
        "pretrained backbones: last epochs that also train the top of the backbone (0: head only)"
    )
    finetune_time: float | None = _opt(
        "pretrained backbones: minutes the fine-tuning step may take", metavar="MIN"
    )
    deterministic: bool = field(
        default=True, metadata={"help": "same seed, same weights on CPU", "cli": False}
    )
    tensorboard: bool = field(
        default=False, metadata={"help": "write TensorBoard logs to RUN/tensorboard"}
    )
    tta: str | None = _opt(
        "test-time augmentation the bundle asks for (default: the model's recipe)",
        choices=TTA_MODES,
    )
    backend: str | None = _opt(
        "Keras backend (default: $KERAS_BACKEND, else tensorflow)", choices=BACKENDS
    )

    def validate(self) -> TrainConfig:
        """Check every field; raise :class:`ImgclsError` naming the first bad one."""
        check_positive_int("epochs", self.epochs, allow_none=True)
        check_positive_int("batch_size", self.batch_size, allow_none=True)
        check_positive_int("checkpoint_every", self.checkpoint_every, allow_none=True)
        check_positive_int("patience", self.patience, allow_none=True)
        check_positive_int("keep_checkpoints", self.keep_checkpoints)
        check(
            self.finetune_epochs is None
            or (isinstance(self.finetune_epochs, int) and self.finetune_epochs >= 0),
            "`finetune_epochs` must be a non-negative integer. "
            f"Received: finetune_epochs={self.finetune_epochs!r}",
        )
        check_minutes("finetune_time", self.finetune_time, allow_none=True)
        if self.lr is not None:
            check(
                _is_number(self.lr) and 0 < self.lr < 10,
                f"`lr` must be a number in (0, 10). Received: lr={self.lr!r}",
            )
        check_minutes("max_time", self.max_time, allow_none=True)
        self.validate_split()
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
                f"`augment` items must be in {set(AUGMENTATIONS)} (or 'none'). "
                f"Received: augment={bad[0] if bad else ''}",
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
        return with_overrides(self, overrides).validate()


ON_ERROR = ("skip", "fail")  # what `imgcls prepare` does with files it cannot use


@dataclass
class PrepareConfig(SplitSettings):
    """What ``imgcls prepare`` is asked to do (its flags are generated from these fields)."""

    image_size: tuple[int, int] | None = _opt(
        "(height, width) of the pixel cache (default: the size `imgcls train` picks)"
    )
    on_error: str = field(
        default="skip",
        metadata={
            "help": "skip: leave bad files out and list them; fail: exit 1 listing them",
            "choices": ON_ERROR,
        },
    )
    label_issues: bool = field(
        default=False, metadata={"help": "rank suspected mislabelled images (cleanlab)"}
    )

    def validate(self) -> PrepareConfig:
        """Check every field; raise :class:`ImgclsError` naming the first bad one."""
        check(
            self.on_error in ON_ERROR,
            f"`on_error` must be one of {{{', '.join(ON_ERROR)}}}. Received: on_error={self.on_error}",
        )
        self.validate_split()
        if self.image_size is not None:
            size = tuple(self.image_size)
            check(
                len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size),
                "`image_size` must be two positive integers (H W). "
                f"Received: image_size={self.image_size}",
            )
            self.image_size = size  # type: ignore[assignment]
        return self


def with_overrides(settings: Any, overrides: dict[str, Any]) -> Any:
    """A copy of the dataclass ``settings`` with ``overrides`` replacing its fields (``None``
    values are ignored); an unknown name is an error naming it and the known ones."""
    known = [f.name for f in dataclasses.fields(settings)]
    unknown = sorted(set(overrides) - set(known))
    check(not unknown, f"Unknown setting(s) {unknown}; known settings are {known}")
    return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into a dict (keys are checked by ``from_dict``)."""
    from imgcls.io import read_table_file

    data = read_table_file(path, "--config", "settings")
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


def check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"`{name}` must be a positive integer. Received: {name}={value!r}",
    )


def check_minutes(name: str, value: Any, allow_none: bool = False) -> None:
    """A time budget: a positive, finite number of minutes (or ``None`` if allowed)."""
    if value is None and allow_none:
        return
    check(
        _is_number(value) and value > 0,
        f"`{name}` must be a positive number of minutes. Received: {name}={value!r}",
    )
