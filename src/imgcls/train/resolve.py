"""Resolving a config against the data and the model registry: the one place defaults are
decided.

:func:`resolve` fills every :class:`~imgcls.config.TrainConfig` field a user left ``None``:
the model from the data's image size (``fast`` for small images; for photos a pretrained
backbone whose weights are at hand, else ``classic`` from scratch), then the image size, the
augmentation that suits the data, and the rest from the model's
:class:`~imgcls.models.recipe.Recipe`. Resolving a resolved config changes nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from imgcls import backend
from imgcls.config import TrainConfig
from imgcls.data.augment import PHOTO_AUGMENT
from imgcls.data.sizes import PRETRAINED_SIDE, default_image_size, is_photo_size
from imgcls.errors import check
from imgcls.models import ModelSpec, get_spec
from imgcls.models.choice import choose_model
from imgcls.models.recipe import Recipe

MIN_ADAPTED_BATCH = 16  # smallest batch a recipe shrinks to on a small data set


@dataclass(frozen=True)
class DataFacts:
    """What :func:`resolve` needs to know about the data.

    Attributes:
        typical_size: the most common (height, width) of the images.
        n_train: images in the training split.
        augment: the augmentation the source recommends (``()`` for none; no flips for digits).
        cache_size: the size of a prepared folder's pixel cache, which training then uses.
    """

    typical_size: tuple[int, int]
    n_train: int
    augment: tuple[str, ...] = ("flip", "translate")
    cache_size: tuple[int, int] | None = None


@dataclass
class Resolved:
    """A resolved :class:`TrainConfig` and one line per choice made for the user."""

    config: TrainConfig
    notes: list[str]


def resolve(config: TrainConfig, data: DataFacts) -> Resolved:
    """Fill every field of ``config`` left ``None`` (see the module docstring).

    A recipe with ``min_steps_per_epoch`` shrinks its batch on small data sets (to a power of
    two, at least 16; an SGD recipe scales its learning rate with it, the linear scaling
    rule), and one with ``min_total_steps`` trains more epochs on them (``max_total_steps``:
    fewer on large ones), unless these were
    given. Test-time augmentation only uses what training showed the model.

    Returns:
        A :class:`Resolved`: the config and one line per choice made for the user.
    """
    notes: list[str] = []
    if config.model is None:
        choice = choose_model(config.image_size or data.typical_size, config.weights)
        config = dataclasses.replace(config, model=choice.model, weights=choice.weights)
        notes.append(choice.reason)
    spec = get_spec(config.model)
    check(
        spec.pretrained or config.weights is None,
        f"`weights` applies only to pretrained backbones, not model '{config.model}'. "
        f"Received: weights={config.weights}",
    )
    fills = _data_fills(config, data, spec)
    recipe = spec.recipe
    for key, value in recipe.config_defaults().items():
        if getattr(config, key) is None:
            fills[key] = value
    if "tta" in fills:  # test-time augmentation only from what training showed the model
        augment = fills.get("augment", config.augment) or ()
        parts = [a for a in ("flip", "translate") if a in fills["tta"] and a in augment]
        fills["tta"] = "_".join(parts) or "none"
    _adapt_to_small_data(fills, config, recipe, data.n_train)
    if notes and spec.pretrained:  # the first line says at what size and what trains
        h, w = fills.get("image_size") or config.image_size
        trains = (
            f"its last {recipe.top_blocks} blocks and a head" if recipe.top_blocks else "a head"
        )
        notes[0] += f"; at {h}x{w}, {trains} fine-tuned on the frozen rest's cached activations"
    return Resolved(config.updated(**fills), notes)


def _data_fills(config: TrainConfig, data: DataFacts, spec: ModelSpec) -> dict[str, Any]:
    """Image size, backend, augmentation and weights, where the config leaves them open."""
    fills: dict[str, Any] = {}
    pretrained = spec.pretrained
    if config.image_size is None:
        native = (spec.native_side or PRETRAINED_SIDE) if pretrained else None
        size = data.cache_size or default_image_size(data.typical_size, native)
        fills["image_size"] = tuple(int(s) for s in size)
    if config.backend is None:
        fills["backend"] = backend.requested()  # no Keras import: see train/ahead.py
    if config.augment is None:
        photo = is_photo_size(data.typical_size) and data.augment != ()
        fills["augment"] = PHOTO_AUGMENT if photo else tuple(data.augment)
    if pretrained and config.weights is None:
        fills["weights"] = "imagenet"
    return fills


def _adapt_to_small_data(
    fills: dict[str, Any], config: TrainConfig, recipe: Recipe, n_train: int
) -> None:
    """A smaller batch (and SGD rate) and more epochs for a data set too small for the recipe's
    batch and steps; only where those settings come from the recipe."""
    min_steps = recipe.min_steps_per_epoch
    if min_steps and "batch_size" in fills and n_train // fills["batch_size"] < min_steps:
        batch = max(MIN_ADAPTED_BATCH, 2 ** int(math.log2(max(n_train / min_steps, 1))))
        if "lr" in fills and recipe.optimizer != "adamw":  # the linear scaling rule
            fills["lr"] = fills["lr"] * batch / fills["batch_size"]
        fills["batch_size"] = batch
    if recipe.min_total_steps and "epochs" in fills:
        batch = fills.get("batch_size", config.batch_size)
        per_epoch = max(1, n_train // max(1, min(batch, n_train)))
        fills["epochs"] = max(fills["epochs"], math.ceil(recipe.min_total_steps / per_epoch))
    if recipe.max_total_steps and "epochs" in fills and not recipe.finetune_epochs:
        batch = fills.get("batch_size", config.batch_size)
        per_epoch = max(1, n_train // max(1, min(batch, n_train)))
        fills["epochs"] = min(fills["epochs"], max(1, round(recipe.max_total_steps / per_epoch)))
