"""The training loop: phases of epochs, each one ``model.fit`` with the run's callbacks.

:class:`Trainer` builds the model and trains it phase by phase (:class:`~.state.Phase`): from
scratch one phase on pixels; a pretrained backbone first trains its head on features computed
once (:mod:`.features`), then optionally fine-tunes the top of the backbone. What happens at
each step and epoch (learning rate, stopping, checkpoints, history, progress) is the work of
the callbacks in :mod:`.callbacks`. At the end the float32 bundle is written and the test
split handed back, for the caller to score through the bundle as ``evaluate`` would.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls import backend
from imgcls.bundle import BundleMeta, RunFolder
from imgcls.config import TrainConfig
from imgcls.data.sources import ImageSet
from imgcls.io import Timeline
from imgcls.models import get_spec
from imgcls.train.checkpoint import CheckpointManager, peek_state, restore
from imgcls.train.rundata import RunData
from imgcls.train.setup import (
    PhaseSetup,
    build_model,
    check_data_parallel,
    class_weights,
    downscaled,
    enter_phase,
    low_res_size,
    raise_resource_error,
    steps_of,
    tensorboard_callbacks,
)
from imgcls.train.state import Clock, Phase, StopRule, TrainState, plan_phases


@dataclass
class TrainedRun:
    """What training produced.

    Attributes:
        run_dir: the run folder.
        history: one row of metrics per epoch.
        stopped: one of :data:`~.state.STOP_REASONS`.
        meta: the bundle's :class:`~imgcls.bundle.BundleMeta` (``None`` on the other
            processes of a data-parallel job, which write nothing).
        test_images: the test split's images (those that decoded), to score through the bundle.
        class_names: the classes, in the model's order.
        left_out: one ``{"path", "kind", "detail"}`` per file that did not decode.
        timeline: where the run's time went, stage by stage.
        test_pixels: the test split decoded at the training size (scored without decoding
            again when the bundle predicts at that size).
    """

    run_dir: Path
    history: list[dict[str, float]]
    stopped: str
    meta: BundleMeta | None
    test_images: ImageSet
    class_names: list[str]
    left_out: list[dict] = field(default_factory=list)
    timeline: Timeline = field(default_factory=Timeline)
    test_pixels: Any = None


class Trainer:
    """One run's training: the model built in ``__init__``, trained by :meth:`run`.

    Args:
        data: the decoded splits.
        folder: the run folder.
        config: the resolved config.
        record: ``run.json``'s content (the bundle's ``data`` comes from it).
        found: the checkpoint to resume from, ``(path, arrays)``, or ``None``.
        verbose: print progress to stderr.
        timeline: where the stages' times go (``model``, ``features``, ``first epoch``,
            ``other epochs``, ``batchnorm``, ``bundle``).
    """

    def __init__(self, data: RunData, folder: RunFolder, config: TrainConfig, record: dict,
                 found: tuple | None, verbose: bool, timeline: Timeline | None = None):  # fmt: skip
        from imgcls.train.precision import resolve_precision

        self.data, self.folder, self.config, self.record = data, folder, config, record
        self.verbose, self.found = verbose, found
        self.spec = get_spec(config.model)
        self.precision = resolve_precision(config.precision, self.spec.recipe.cpu_bf16)
        backend.seed_everything(config.seed, config.deterministic)
        import keras

        keras.config.set_dtype_policy(self.precision)
        # where the first weights come from: a checkpoint, another run, or the model's own
        self.start_from = config.init_from if found is None else None
        self.process, self.processes = backend.process_info()
        self.devices = backend.data_parallel(True)  # before any variable exists
        if self.devices > 1:
            check_data_parallel(config, self.spec, self.devices)
        x_train = data.arrays["train"][0]
        self.model = build_model(config, self.spec, len(data.class_names), x_train,
                                 self.start_from, found is not None, self.log)  # fmt: skip
        self.steps = steps_of(len(x_train), config.batch_size)
        self.phases = plan_phases(config, self.spec.pretrained, self.spec.recipe)
        self.stop = StopRule(config.epochs, config.patience, (config.max_time or 0) * 60 or None)
        self.clock = Clock(agreed=self.processes > 1 and bool(self.stop.max_time_s))
        self.ckpt = CheckpointManager(folder.path, keep=config.keep_checkpoints)
        self.setup: PhaseSetup | None = None
        self.low_res_model: Any = None  # the phase's model behind a downscale (recipe.low_res)
        self.callbacks: list = []
        self.cut = None  # the backbone layer whose activations a head phase caches
        if self.spec.pretrained:
            from imgcls.models.applications import cut_layer

            self.cut = cut_layer(self.model, self.spec.recipe.top_blocks)
        self.activations: Any = None  # train/features.Activations, once computed
        self.feature_pass: dict[str, float] | None = None  # images, seconds, images/s, engine
        self.timeline = timeline or Timeline()

    @property
    def chief(self) -> bool:
        """Process 0 of a data-parallel job (or the only one): the one that writes files."""
        return self.process == 0

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def phase_at(self, epoch: int) -> Phase:
        return next((p for p in self.phases if p.start <= epoch < p.end), self.phases[-1])

    def run(self) -> TrainedRun:
        """Train every phase (from the checkpoint, if resuming), then write the bundle."""
        self.log_plan()
        state = self.initial_state()
        self.timeline.mark("model")
        self.clock.start(state.elapsed_s)
        while state.epoch < self.config.epochs and not state.stopped:
            self.fit_epoch(state)
            epochs = "other epochs" if "first epoch" in self.timeline.stages else "first epoch"
            self.timeline.mark(epochs)  # the first pays for tracing and compiling
        if state.stopped:
            self.log_stop(state)
        return self.finish(state)

    def log_plan(self) -> None:
        c, counts = self.config, self.data.counts()
        self.log(
            f"data: {len(self.data.class_names)} classes, {counts['train']} train / "
            f"{counts['val']} val / {counts['test']} test images at {c.image_size[0]}x{c.image_size[1]}"
        )
        weights = ""
        if self.start_from:
            weights = f", weights of {self.start_from}"
        elif self.spec.pretrained:
            from imgcls.models.applications import weights_source

            weights = f", {weights_source(c.model, c.weights)}"
        plan = " then ".join(f"{p.epochs} {p.name}" for p in self.phases)
        devices = f" over {self.devices} devices in {self.processes} processes"
        size = self.test_size()
        at = "" if size == tuple(c.image_size) else f", predicting at {size[0]}x{size[1]}"
        self.log(
            f"model {c.model}{weights}: {self.model.count_params():,} parameters, precision "
            f"{self.precision}{at}, epochs: {plan}, {self.steps} steps of "
            f"{min(c.batch_size, counts['train'])}" + (devices if self.devices > 1 else "")
        )
        if self.low_res_epochs():
            small = "x".join(map(str, low_res_size(c.image_size, self.spec.recipe.low_res[1])))
            self.log(f"progressive resizing: epochs 1-{self.low_res_epochs()} see the images "
                     f"downscaled to {small}, the rest at full size")  # fmt: skip
        if any(p.name == "head" for p in self.phases):
            recipe = self.spec.recipe
            tuned = (
                f"its last {recipe.top_blocks} blocks and the head"
                if recipe.top_blocks
                else "the head"
            )
            finetune = "" if c.finetune_epochs else (
                "; the rest stays frozen (fine-tuning all of it recomputes the backbone every "
                "step: --finetune-epochs N)")  # fmt: skip
            self.log(
                f"fine-tuning: the frozen bottom runs once over {recipe.feature_views} views of "
                f"each training image, then {tuned} train on its stored activations{finetune}"
            )

    def initial_state(self) -> TrainState:
        if self.found is None:
            return TrainState()
        path, arrays = self.found
        saved = TrainState.from_dict(peek_state(arrays), str(path))
        self.enter(self.phase_at(saved.epoch), saved)
        # A checkpoint from the previous phase holds that phase's optimizer; the new phase starts
        # with a fresh one, exactly as an uninterrupted run does.
        optimizer_too = saved.phase == self.setup.phase.name
        restore(self.model, self.setup.optimizer, arrays, optimizer_too=optimizer_too)
        if saved.stopped == "max_time":
            saved.stopped = None  # resuming is the request to go on (under the new --max-time)
        self.log(f"resumed from {path.name}: epoch {saved.epoch + 1}, step {saved.step_in_epoch}")
        return saved

    def enter(self, phase: Phase, state: TrainState) -> None:
        """Set up ``phase`` (trainable layers, fresh optimizer) and its callbacks."""
        from imgcls.train import callbacks as cb

        c = self.config
        self.setup = enter_phase(self.model, phase, c, self.spec, self.steps,
                                 bool(self.stop.max_time_s), self.log, self.cut)  # fmt: skip
        run = (state, self.setup, self.steps, self.clock)
        history = self.folder.history if self.chief else None
        self.callbacks = [
            cb.EpochLog(*run, history),
            *([cb.LearningRate(*run, self.stop)] if self.setup.host_rate else []),
            cb.Stopping(*run, self.stop, (str(self.ckpt.dir), c.lr)),
            cb.Checkpointing(*run, self.save_checkpoint, c.checkpoint_every),
            *([cb.Progress(*run, c.epochs, self.batch())] if self.verbose else []),
            *(tensorboard_callbacks(self.folder) if c.tensorboard else []),
        ]

    def batch(self) -> int:
        return min(self.config.batch_size, len(self.data.arrays["train"][0]))

    def fit_epoch(self, state: TrainState) -> None:
        """Train the rest of epoch ``state.epoch`` (from ``state.step_in_epoch``)."""
        phase = self.phase_at(state.epoch)
        if self.setup is None or phase != self.setup.phase:
            self.enter(phase, state)
        if phase.name == "head" and self.activations is None:
            self.timeline.mark("model")  # entering the phase builds its training graph
            self.compute_activations()
            self.timeline.mark("features")
        if state.phase != phase.name:  # a phase's time budget counts from its start
            state.phase, state.phase_started_s = phase.name, self.clock()
        ds, val = self.datasets(state.epoch, state.step_in_epoch)
        try:
            self.fit_model_at(state.epoch).fit(
                ds, epochs=state.epoch + 1, initial_epoch=state.epoch, validation_data=val,
                callbacks=self.callbacks, shuffle=False, verbose=0,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - re-raised unless a known resource failure
            raise_resource_error(e, self.config.batch_size)
            raise

    def low_res_epochs(self) -> int:
        """How many first epochs train downscaled: the recipe's ``low_res``, when the whole
        network trains on pixels (not a pretrained backbone's head and fine-tuning phases)."""
        low = self.spec.recipe.low_res
        if low is None or self.phases[0].name != "train":
            return 0
        return round(low[0] * self.config.epochs)

    def fit_model_at(self, epoch: int):
        """What ``fit`` trains in ``epoch``: the phase's model, or in the first
        :meth:`low_res_epochs` that model behind a downscale (progressive resizing)."""
        if epoch >= self.low_res_epochs():
            return self.setup.fit_model
        if self.low_res_model is None:
            self.low_res_model = downscaled(self.setup.fit_model, self.spec.recipe.low_res[1],
                                            self.setup.optimizer, self.config.label_smoothing)  # fmt: skip
        return self.low_res_model

    def compute_activations(self) -> None:
        """Run the frozen bottom once over every training view and validation image (or read
        what a run interrupted earlier stored)."""
        from imgcls.models.applications import split_at
        from imgcls.train.features import PassProgress, compute_activations
        from imgcls.train.frozen import weights_digest

        c, views = self.config, self.spec.recipe.feature_views
        x, xv = self.data.arrays["train"][0], self.data.arrays["val"][0]
        bottom = split_at(self.model, self.cut)[0]
        key = f"{weights_digest(bottom)}|{views}|{c.augment}|{c.seed}|{self.record['data']['fingerprint']}"
        progress = PassProgress("features", views * len(x) + len(xv), enabled=self.verbose)
        self.activations, self.feature_pass = compute_activations(
            bottom, x, xv, views, c.augment or (), c.seed, self.folder.activations, key, progress
        )
        if self.feature_pass is not None:
            progress.close()

    def datasets(self, epoch: int, skip: int):
        """The epoch's training batches and the validation batches, in the phase's form."""
        from imgcls.data.pipeline import EpochPlan, eval_dataset, train_dataset

        c, recipe = self.config, self.spec.recipe
        (x, y), (xv, yv) = self.data.arrays["train"], self.data.arrays["val"]
        n_classes = len(self.data.class_names)
        augment: tuple[str, ...] = c.augment or ()
        if self.setup.phase.name == "head":
            x, augment = self.activations.epoch(c.seed, epoch), ()
            xv = self.activations.val if self.activations.val is not None else xv[:0]
        weights = class_weights(y, n_classes) if c.class_weight == "balanced" else None
        fraction = recipe.translate_fraction
        shard = (self.process, self.processes)
        plan = EpochPlan(
            c.batch_size, c.seed, epoch, augment, skip,
            translate=max(1, round(min(c.image_size) * fraction)) if fraction else None,
            alternate_flip=recipe.alternate_flip, shard=shard,
        )  # fmt: skip
        ds = train_dataset(x, y, plan, weights, n_classes)
        val = eval_dataset(xv, yv, c.batch_size, n_classes, shard) if len(xv) else None
        return ds, val

    def save_checkpoint(self, state: TrainState, best: bool = False) -> None:
        if self.chief:
            self.ckpt.save(self.model, self.setup.optimizer, state.to_dict(), best=best)

    def log_stop(self, state: TrainState) -> None:
        c, where = self.config, f"epoch {state.epoch + (state.step_in_epoch > 0)}"
        self.log(
            {
                "early_stopping": f"early stopping: no val_loss improvement for {c.patience} "
                f"epochs (best epoch {state.best_epoch})",
                "max_time": f"stopped: --max-time {c.max_time} min reached at {where}, "
                f"step {state.step_in_epoch}",
                "finetune_time": f"fine-tuning budget of {c.finetune_time} min reached at {where}",
            }[state.stopped]
        )

    def float32_classifier(self):
        """The trained model in float32, the precision every bundle is saved in; a model that
        trained in mixed precision gets its BatchNorm statistics recomputed in float32."""
        from imgcls.bundle import float32_copy
        from imgcls.train.precision import recalibrate_batchnorm

        model = float32_copy(self.model)
        if model is not self.model:
            self.timeline.mark("bundle")
            n = recalibrate_batchnorm(model, self.data.arrays["train"][0], self.config.seed)
            self.timeline.mark("batchnorm")
            if n:
                self.log(f"recomputed {n} BatchNorm layers' statistics in float32")
        return model

    def finish(self, state: TrainState) -> TrainedRun:
        """Write the bundle (process 0 alone) and hand back what the run trained."""
        from imgcls.backend import library_versions
        from imgcls.bundle import save_bundle
        from imgcls.data.decode import PREPROCESSING

        c = self.config
        stopped = state.stopped or "completed"
        backend.data_parallel(False)  # the bundle and its test score are process 0's alone
        data = self.data
        done = TrainedRun(self.folder.path, state.history, stopped, None, data.split_images("test"),
                          data.class_names, data.left_out, self.timeline,
                          data.arrays["test"][0])  # fmt: skip
        if not self.chief:
            return done
        shutil.rmtree(self.folder.activations, ignore_errors=True)
        size = self.test_size()
        metrics: dict[str, Any] = {
            "test_accuracy": None,
            "epochs_run": state.epoch,
            "stopped": stopped,
            "precision": self.precision,
            "train_seconds": round(state.elapsed_s, 2),
            "devices": self.devices,
            "processes": self.processes,
            **({"feature_pass": self.feature_pass} if self.feature_pass else {}),
        }
        done.meta = BundleMeta(
            class_names=data.class_names, image_size=size,
            preprocessing=dict(PREPROCESSING), tta=c.tta, config=c.to_dict(),
            data=self.record["data"], versions=library_versions(), metrics=metrics,
        )  # fmt: skip
        save_bundle(self.folder.path, self.at_size(self.float32_classifier(), size), done.meta)
        self.timeline.mark("bundle")
        at = "" if size == tuple(c.image_size) else f" (predicting at {size[0]}x{size[1]})"
        self.log(f"saved {self.folder.model}{at}")
        return done

    def test_size(self) -> tuple[int, int]:
        """The size the bundle predicts at: the training size times the recipe's test scale."""
        scale = self.spec.recipe.test_scale
        return tuple(
            int(round(s * scale / 8) * 8) if scale != 1 else int(s) for s in self.config.image_size
        )

    def at_size(self, model, size: tuple[int, int]):
        """``model`` rebuilt for ``size`` inputs with the same weights (a backbone pooled
        globally takes any size), or ``model`` itself at its own size."""
        if tuple(model.input_shape[1:3]) == size:
            return model
        from imgcls.models import create_model

        kwargs = dict(self.config.model_args)
        if self.spec.pretrained:  # the trained weights replace them
            kwargs["weights"] = "none"
        resized = create_model(self.config.model, (*size, 3), len(self.data.class_names), **kwargs)
        resized.set_weights(model.get_weights())
        return resized
