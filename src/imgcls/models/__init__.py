"""Model registry: ``create_model(name, ...)``, ``list_models()``, ``@register_model``.

Every model takes float32 RGB pixels in 0..255 of the run's image size (scaling lives inside
the model, so it travels with the saved file) and returns class probabilities (softmax, float32).
A model's *recipe* (:class:`~imgcls.models.recipe.Recipe`) holds the training settings it was
tuned with; ``imgcls train`` uses them unless a config file or flag says otherwise.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imgcls.errors import ImgclsError
from imgcls.models.recipe import Recipe

# Modules that register models when imported; a new family adds its module here.
_FAMILIES = ("imgcls.models.classic", "imgcls.models.fast", "imgcls.models.applications")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and the recipe it trains best with."""

    name: str
    build: Callable[..., Any]
    description: str
    recipe: Recipe = field(default_factory=Recipe)
    min_side: int = 8  # smallest image side in pixels the architecture accepts
    pretrained: bool = False  # takes `weights` (imagenet, none or a file)
    native_side: int | None = None  # pixels a side a pretrained backbone's weights were trained at
    space: dict[str, Any] = field(default_factory=dict)  # what `imgcls tune` searches

    def init_from_data(self, model: Any, images: Any, seed: int) -> None:
        """Run the family's ``init_from_data(model, train_images, seed)`` if it has one."""
        module = importlib.import_module(self.build.__module__)
        if hasattr(module, "init_from_data"):
            module.init_from_data(model, images, seed)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    description: str,
    recipe: Recipe | dict[str, Any] | None = None,
    min_side: int = 8,
    pretrained: bool = False,
    space: dict[str, Any] | None = None,
    native_side: int | None = None,
) -> Callable:
    """Decorator adding a builder ``fn(input_shape, num_classes, **kwargs) -> keras.Model``.

    ``recipe`` is a :class:`Recipe` (a dict is checked key by key); ``space`` is what
    ``imgcls tune`` searches, in the form :mod:`imgcls.tune.space` reads."""
    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_dict(recipe or {})

    def wrap(fn: Callable) -> Callable:
        _REGISTRY[name] = ModelSpec(
            name, fn, description, recipe, min_side=min_side, pretrained=pretrained,
            native_side=native_side, space=dict(space or {}),
        )  # fmt: skip
        return fn

    return wrap


def _load_families() -> None:
    for module in _FAMILIES:
        importlib.import_module(module)


def list_models() -> list[str]:
    """Names of every registered model."""
    _load_families()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered as ``name``."""
    _load_families()
    if name not in _REGISTRY:
        raise ImgclsError(f"`model` must be one of {sorted(_REGISTRY)}. Received: model={name}")
    return _REGISTRY[name]


def layer_seed() -> int:
    """A seed for a random layer (dropout), drawn from Python's RNG, which the trainer seeds.

    Builders pass it explicitly: a Keras ``Dropout`` left without one draws its masks from
    PyTorch's global generator on the torch backend, which no checkpoint holds, so a resumed
    run would drop other units than an uninterrupted one.
    """
    import random

    return random.randint(1, 2**31 - 1)


def create_model(name: str, input_shape: tuple[int, int, int], num_classes: int, **kwargs: Any):
    """Build the registered model ``name`` for images of ``input_shape`` and ``num_classes``.

    Example:
        >>> model = create_model("classic", (32, 32, 3), 10)
        >>> model.output_shape
        (None, 10)
    """
    spec = get_spec(name)
    side = min(input_shape[:2])
    if side < spec.min_side:
        raise ImgclsError(
            f"model '{name}' needs images of at least {spec.min_side}x{spec.min_side} pixels. "
            f"Received: image_size={input_shape[0]} {input_shape[1]}"
        )
    try:  # check the arguments first, so a TypeError from inside the builder is not blamed on them
        inspect.signature(spec.build).bind(tuple(input_shape), int(num_classes), **kwargs)
    except TypeError as e:
        raise ImgclsError(
            f"model '{name}' does not take these arguments {sorted(kwargs)}: {e}"
        ) from None
    return spec.build(tuple(input_shape), int(num_classes), **kwargs)
