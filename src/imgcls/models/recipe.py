"""A model's recipe: the training settings it was tuned with, as one frozen dataclass.

The first fields (epochs to finetune_time) fill the :class:`~imgcls.config.TrainConfig` fields
a user left unset; the rest say how to train the family (optimizer, schedule, augmentation
details, the head phase of a pretrained backbone) and have no flag. Every default lives here
once: a family states only what it changes, and reading a setting is an attribute, so a
mistyped name fails at once instead of falling back to some default.

Example:
    >>> Recipe(epochs=24, optimizer="sgd").batch_size
    64
    >>> Recipe.from_dict({"epoch": 3})  # doctest: +SKIP
    ImgclsError: Unknown recipe key(s) ['epoch']; a recipe takes ['epochs', 'batch_size', ...]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from imgcls.errors import ImgclsError, check

OPTIMIZERS = ("adamw", "sgd", "muon")
SCHEDULES = ("cosine", "linear")  # after the warm-up: cosine or linear decay to zero
# The recipe fields that fill a TrainConfig's unset fields of the same names.
CONFIG_FIELDS = (
    "epochs",
    "batch_size",
    "lr",
    "label_smoothing",
    "weight_decay",
    "tta",
    "finetune_epochs",
    "finetune_time",
)


@dataclass(frozen=True)
class Recipe:
    """How a model family trains best; :func:`~imgcls.models.register_model` stores one.

    Attributes:
        epochs, batch_size, lr, label_smoothing, weight_decay, tta, finetune_epochs,
            finetune_time: the defaults of the :class:`~imgcls.config.TrainConfig` fields of
            the same names.
        optimizer: ``adamw``, ``sgd`` (Nesterov, ``momentum``), or ``muon`` (the same SGD, with
            Muon steps for the convolution kernels: :mod:`imgcls.train.optimizers`).
        schedule: the decay after the warm-up, ``cosine`` or ``linear``.
        warmup: the warm-up's share of the steps (``None``: one epoch, at most a quarter).
        lr_start, lr_end: the rate where the warm-up starts and where the decay ends, as
            shares of the peak (``lr_start=None``: 0 before a linear decay, 0.01 before a
            cosine one).
        lookahead: ``(every, decay)``: SGD with lookahead weight averaging (airbench).
        alternate_flip: each image mirrored in every other epoch instead of by chance.
        translate_fraction: largest shift as a share of the image side (default: an eighth).
        min_steps_per_epoch: on smaller data sets the batch shrinks (to a power of two, at
            least 16) until an epoch has this many steps.
        min_total_steps: on smaller data sets the run trains more epochs, to this many steps.
        max_total_steps: on larger data sets the run trains fewer epochs, to about this many
            steps (at least one epoch).
        feature_views: views per training image the frozen bottom of a backbone computes
            activations of (:mod:`imgcls.train.features`).
        top_blocks: the backbone's last blocks that train with the head on those activations
            (0: the head alone, on the pooled features).
        test_scale: the bundle predicts at this multiple of the training side (the "FixRes"
            effect: training crops enlarge objects, so a larger test image matches them).
        finetune_lr_factor: the fine-tuning phase's rate as a share of ``lr``.
        finetune_fraction: the top share of the backbone's layers fine-tuning trains.
        cpu_bf16: ``--precision auto`` may pick bfloat16 on a CPU that computes it natively.
        low_res: ``(share, scale)``: progressive resizing. The first ``share`` of the epochs of
            a from-scratch run train on images downscaled by ``scale`` inside the graph (the
            network is fully convolutional and pooled globally), the rest at full size; the
            optimizer, its schedule and the weights carry through.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    tta: str = "none"
    finetune_epochs: int = 0
    finetune_time: float | None = None
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup: float | None = None
    lr_start: float | None = None
    lr_end: float = 0.0
    momentum: float = 0.9
    lookahead: tuple[int, float] | None = None
    alternate_flip: bool = False
    translate_fraction: float | None = None
    min_steps_per_epoch: int | None = None
    min_total_steps: int | None = None
    max_total_steps: int | None = None
    feature_views: int = 1
    top_blocks: int = 0
    test_scale: float = 1.0
    finetune_lr_factor: float = 1.0
    finetune_fraction: float = 0.2
    cpu_bf16: bool = True
    low_res: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        check(
            self.optimizer in OPTIMIZERS,
            f"recipe `optimizer` must be one of {set(OPTIMIZERS)}. Received: optimizer={self.optimizer!r}",
        )
        check(
            self.schedule in SCHEDULES,
            f"recipe `schedule` must be one of {set(SCHEDULES)}. Received: schedule={self.schedule!r}",
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        """A recipe from a dict, refusing keys a recipe does not have (naming them and the
        allowed ones)."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ImgclsError(f"Unknown recipe key(s) {unknown}; a recipe takes {known}")
        return cls(**values)

    def config_defaults(self) -> dict[str, Any]:
        """The values that fill a config's unset fields (``None`` ones left out)."""
        return {k: getattr(self, k) for k in CONFIG_FIELDS if getattr(self, k) is not None}
