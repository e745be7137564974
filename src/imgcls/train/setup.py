"""Pieces the trainer sets up: the model, each phase's optimizer and rate plan, class weights,
and the checks and messages of a run."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgcls import backend
from imgcls.bundle import RunFolder
from imgcls.config import TrainConfig
from imgcls.errors import ImgclsError, check, require
from imgcls.models import ModelSpec, create_model
from imgcls.models.recipe import Recipe
from imgcls.train import optimizers
from imgcls.train.state import Phase

WARMUP_EPOCHS = 1  # linear learning-rate warm-up before the decay
# Share of a time budget a run may run ahead of its steps before the clock sets the rate. A run
# on pace (start-up and tracing included) keeps a rate that is a function of the step alone,
# so it stays bit-reproducible; a run that would overrun its budget decays by the clock.
CLOCK_SLACK = 0.05


@dataclass(frozen=True)
class LrPlan:
    """The learning rate of every step of one training phase: warm-up, then decay.

    ``plan(step, time_used)`` is ``peak`` times the smaller of the warm-up ramp (from
    ``start * peak`` over ``warmup`` steps) and the decay (``linear`` or ``cosine``, down to
    ``end * peak``) at the phase's progress. Progress is the share of steps done, or, once the
    share of a time budget spent (``time_used``, 0 without one) runs more than
    :data:`CLOCK_SLACK` ahead of it, the time share (rescaled to reach 1 at the deadline): a run
    that would overrun ``--max-time`` decays to its end as its budget runs out instead of being
    cut off at a high rate.

    Example:
        >>> plan = LrPlan(0.4, warmup=10, total=110, shape="linear")
        >>> plan(10), plan(60), plan(60, time_used=0.52), round(plan(60, time_used=0.81), 6)
        (0.4, 0.2, 0.2, 0.08)
    """

    peak: float
    warmup: int
    total: int
    shape: str = "linear"  # or "cosine"
    start: float = 0.0
    end: float = 0.0

    def progress(self, step: int, time_used: float = 0.0) -> float:
        """How far the decay has gone, 0 to 1: steps after warm-up, or the budget, if further
        ahead than :data:`CLOCK_SLACK`."""
        clock = (time_used - CLOCK_SLACK) / (1 - CLOCK_SLACK)
        return min(max(self._done(step), clock, 0.0), 1.0)

    def __call__(self, step: int, time_used: float = 0.0) -> float:
        where = lambda cond, a, b: a if cond else b  # noqa: E731 - Python's ops.where
        return self._rate(step, self.progress(step, time_used), where, math.cos, min)

    def tensor(self, step):
        """``(rate, progress)`` at ``step`` (a float32 tensor) without a clock, in ``keras.ops``,
        for :func:`plan_in_graph`."""
        from keras import ops

        progress = ops.clip(self._done(step), 0.0, 1.0)
        return self._rate(step, progress, ops.where, ops.cos, ops.minimum), progress

    def _done(self, step):
        """The share of the decay's steps done (unclipped)."""
        return (step - self.warmup) / max(self.total - self.warmup, 1)

    def _rate(self, step, progress, where, cos, minimum):
        """The one formula, on Python floats or on tensors (``where``, ``cos``, ``minimum``)."""
        ramp = 1.0
        if self.warmup:
            ramp = where(
                step < self.warmup, self.start + (1.0 - self.start) * step / self.warmup, 1.0
            )
        cosine = self.shape != "linear"
        decay = 0.5 * (1.0 + cos(math.pi * progress)) if cosine else 1.0 - progress
        return self.peak * minimum(ramp, self.end + (1.0 - self.end) * decay)


def plan_in_graph(optimizer, plan: LrPlan) -> None:
    """Let ``optimizer`` set its learning rate (and a lookahead's ``progress``) from ``plan`` at
    its own step count, inside the compiled training step, instead of the trainer assigning
    them from the host before each step. On JAX a host assignment needs the whole training
    state synced back into the Keras variables and re-read (measured ~3.5 ms a step on 2
    cores for ``fast``: 7 s over the 2,088 steps of a 24-epoch CIFAR-10 run). Only for plans
    without a clock: a time budget's share is known only on the host. The rate and progress
    stay the optimizer's variables, so checkpoints look the same either way."""
    from keras import ops

    apply = optimizer.apply

    def planned_apply(grads, trainable_variables=None):
        rate, progress = plan.tensor(ops.cast(optimizer.iterations, "float32"))
        optimizer.learning_rate.assign(rate)
        if hasattr(optimizer, "progress"):
            optimizer.progress.assign(progress)
        return apply(grads, trainable_variables)

    optimizer.apply = planned_apply


def build_optimizer(
    config: TrainConfig,
    recipe: Recipe,
    steps_per_epoch: int,
    epochs: int | None = None,
    lr: float | None = None,
) -> tuple[Any, LrPlan]:
    """The recipe's optimizer (AdamW, Nesterov SGD, or SGD with Muon for the convolutions) and
    the plan that sets its rate each step.

    ``epochs`` and ``lr`` default to the config's; a training phase passes its own. The
    trainer assigns the rate before every step from the :class:`LrPlan` (warm-up, then
    cosine or linear decay), so it depends on the step alone, or also on the clock under
    ``--max-time``.
    """
    import keras

    lr = config.lr if lr is None else lr
    linear = recipe.schedule == "linear"
    total = max(1, (config.epochs if epochs is None else epochs) * steps_per_epoch)
    if recipe.warmup is None:
        warmup = min(WARMUP_EPOCHS * steps_per_epoch, total // 4)
    else:
        warmup = int(recipe.warmup * total)
    start = recipe.lr_start if recipe.lr_start is not None else 0.0 if linear else 0.01
    plan = LrPlan(lr, warmup, total, recipe.schedule, start, recipe.lr_end)
    first = plan(0)
    if recipe.optimizer == "adamw":
        return keras.optimizers.AdamW(first, weight_decay=config.weight_decay or 0.0), plan
    sgd = dict(momentum=recipe.momentum, nesterov=True, weight_decay=config.weight_decay or None)
    if recipe.optimizer == "muon":
        every, decay = recipe.lookahead or (0, 0.0)
        return optimizers.LookaheadMuon(first, every, decay, **sgd), plan
    if not recipe.lookahead:
        return keras.optimizers.SGD(first, **sgd), plan
    every, decay = recipe.lookahead
    return optimizers.LookaheadSGD(first, every, decay, **sgd), plan


@dataclass
class PhaseSetup:
    """What one phase trains with: the model ``fit`` runs (the head alone in a head phase), a
    fresh optimizer and its rate plan; ``host_rate``: the trainer sets the rate before each
    step (else the optimizer sets it inside its compiled step, :func:`plan_in_graph`)."""

    phase: Phase
    fit_model: Any
    optimizer: Any
    plan: LrPlan
    host_rate: bool


def enter_phase(
    model, phase: Phase, config: TrainConfig, spec: ModelSpec, steps: int, clocked: bool, log,
    cut: str | None = None,
) -> PhaseSetup:  # fmt: skip
    """Set ``model`` up for ``phase``: its trainable layers, what ``fit`` trains, a fresh
    compiled optimizer. ``clocked``: a time budget binds the run (its rate needs the host);
    ``cut``: the backbone layer whose cached activations a head phase trains on (``None``:
    the pooled features)."""
    from imgcls.models import applications as apps

    fit_model = model
    if phase.name == "head":  # the head (and the blocks above `cut`) on cached activations
        apps.set_top_layers(model, cut)  # the trainer's plan says which
        fit_model = apps.split_at(model, cut)[1]
    elif phase.name == "finetune":
        n = apps.set_finetune_layers(model, spec.recipe.finetune_fraction)
        log(f"fine-tuning the top {n} layers of the backbone and the head")
    optimizer, plan = build_optimizer(config, spec.recipe, steps, epochs=phase.epochs, lr=phase.lr)
    compile_for_training(fit_model, optimizer, config.label_smoothing)
    optimizer.build(fit_model.trainable_variables)
    # JAX sets the rate inside its compiled step unless a clock steers it (see plan_in_graph)
    host_rate = backend.name() != "jax" or clocked or bool(phase.budget_s)
    if not host_rate:
        plan_in_graph(optimizer, plan)
    return PhaseSetup(phase, fit_model, optimizer, plan, host_rate)


def low_res_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The side lengths a progressive-resizing epoch trains at (at least 8 pixels)."""
    return tuple(max(8, round(s * scale)) for s in size)


def downscaled(fit_model, scale: float, optimizer, label_smoothing: float):
    """``fit_model`` behind an in-graph bilinear downscale by ``scale`` (its layers called
    again, so the weights are the same variables), compiled with the same ``optimizer``: what a
    progressive-resizing epoch trains. The network must be a chain of layers (``fast`` is);
    Keras refuses to call a functional model itself at another input size."""
    import keras

    layers = fit_model.layers
    check(
        all(b.input is a.output for a, b in zip(layers[:-1], layers[1:], strict=True)),
        f"recipe `low_res` needs a network that is a chain of layers; {fit_model.name} is not",
    )
    h, w, c = fit_model.input_shape[1:]
    small = low_res_size((h, w), scale)
    inputs = keras.Input((h, w, c), name="pixels")
    x = keras.layers.Resizing(*small, interpolation="bilinear", dtype="float32")(inputs)
    for layer in layers[1:]:
        x = layer(x)
    model = keras.Model(inputs, x, name=f"{fit_model.name}_{small[0]}x{small[1]}")
    compile_for_training(model, optimizer, label_smoothing)
    return model


def compile_for_training(model, optimizer, label_smoothing: float) -> None:
    """What every phase trains on: categorical cross-entropy (smoothed) and accuracy."""
    import keras

    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def build_model(
    config: TrainConfig,
    spec: ModelSpec,
    n_classes: int,
    x_train: np.ndarray,
    init_from: str | None,
    from_checkpoint: bool,
    log: Callable[[str], None],
):
    """The run's model: built (pretrained weights only when no checkpoint or run gives every
    weight), initialised from the training images where the family does that, then set to
    ``init_from``'s weights if given."""
    kwargs = dict(config.model_args)
    if spec.pretrained:  # a checkpoint (or run) holds every weight: none to fetch
        kwargs["weights"] = "none" if from_checkpoint or init_from else config.weights
    model = create_model(config.model, (*config.image_size, 3), n_classes, **kwargs)
    spec.init_from_data(model, x_train, config.seed)
    if init_from:
        load_initial_weights(model, init_from)
        log(f"starting from the weights of {init_from}")
    return model


def check_data_parallel(config: TrainConfig, spec, devices: int) -> None:
    """What a data-parallel job (every batch spread over ``devices``) cannot do, in one line."""
    check(
        not spec.pretrained,
        f"training on {devices} devices runs from-scratch models (fast, classic); "
        f"{config.model} trains its head on one process",
    )
    check(
        config.batch_size % devices == 0,
        f"`batch_size` must split evenly over {devices} devices. "
        f"Received: batch_size={config.batch_size}",
    )


def check_init_from(run: str, config: TrainConfig, class_names: list[str]) -> None:
    """One-line errors, before anything is written, when RUN (``--init-from``) trained another
    model, image size, set of classes or model arguments than this run would."""
    import json

    from imgcls.bundle import read_meta

    meta = read_meta(run)
    theirs = meta.config.get("model")
    check(
        theirs == config.model,
        f"--init-from {run} trained {theirs}; this run trains {config.model} (pass --model {theirs})",
    )
    size = tuple(meta.config.get("image_size") or meta.image_size)  # trained at, not predicts at
    check(
        size == tuple(config.image_size),
        f"--init-from {run} trained at {size[0]}x{size[1]}; this run at "
        f"{config.image_size[0]}x{config.image_size[1]} (pass --image-size {size[0]} {size[1]})",
    )
    check(
        list(meta.class_names) == list(class_names),
        f"--init-from {run} has classes {', '.join(meta.class_names)}; DATA has "
        f"{', '.join(class_names)}",
    )
    args = [json.dumps(a or {}, sort_keys=True) for a in (meta.config.get("model_args"), config.model_args)]  # fmt: skip
    check(
        args[0] == args[1],
        f"--init-from {run} built {theirs} with other model arguments ({args[0]} vs {args[1]})",
    )


def load_initial_weights(model, run: str) -> None:
    """Set ``model``'s weights (batch-norm statistics and frozen layers included) to those of
    RUN's trained classifier (checked by :func:`check_init_from`)."""
    from imgcls.bundle import classifier_of, load_model

    weights = classifier_of(load_model(run)).get_weights()
    check(
        [w.shape for w in weights] == [tuple(v.shape) for v in model.weights],
        f"--init-from {run}: its weights do not fit this model",
    )
    model.set_weights(weights)


def steps_of(n_images: int, batch_size: int) -> int:
    from imgcls.data.pipeline import steps_per_epoch

    return steps_per_epoch(n_images, batch_size)


def tensorboard_callbacks(folder: RunFolder) -> list:
    import keras

    require("tensorboard", why="`--tensorboard`", extra="tensorboard")
    return [keras.callbacks.TensorBoard(log_dir=str(folder.tensorboard))]


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)


def raise_resource_error(e: Exception, batch_size: int) -> None:
    if backend.is_out_of_memory(e):
        raise ImgclsError(
            f"out of memory with --batch-size {batch_size}; the last good checkpoint is intact. "
            f"Free memory and --resume the run, or start a new run with --batch-size "
            f"{max(1, batch_size // 2)}"
        ) from None
