"""The training loop: data -> model -> phases of epochs with checkpoints -> bundle.

``train(DATA, out=RUN)`` reads and splits the data, resolves the config against it, decodes
every image once, builds the model and trains it phase by phase (:class:`~.state.Phase`):
from scratch one phase on pixels; a pretrained backbone first trains its head on features
computed once (:mod:`.features`), then optionally fine-tunes the top of the backbone. After
every epoch (and every ``checkpoint_every`` steps) the whole state is checkpointed
atomically, so ``train(resume=True, out=RUN)`` continues exactly where a crash left off. At
the end the model bundle, ``history.csv`` and the test accuracy are written into RUN.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from imgcls import backend
from imgcls.bundle import RunFolder
from imgcls.config import TrainConfig
from imgcls.errors import ImgclsError
from imgcls.io import write_csv
from imgcls.models import get_spec
from imgcls.train.api import TrainResult
from imgcls.train.checkpoint import CheckpointManager, peek_state, restore
from imgcls.train.rundata import RunData
from imgcls.train.setup import (
    build_optimizer,
    check_data_parallel,
    class_weights,
    load_initial_weights,
    plan_in_graph,
    raise_resource_error,
    steps_of,
    tensorboard_callbacks,
)
from imgcls.train.state import Phase, StopRule, TrainState, plan_phases


class _Trainer:
    """One run's training: built whole in ``__init__``, driven by :meth:`run`."""

    def __init__(
        self,
        data: RunData,
        folder: RunFolder,
        config: TrainConfig,
        record: dict[str, Any],
        resume: bool,
        verbose: bool,
    ):
        from imgcls.models import create_model
        from imgcls.train.precision import resolve_precision

        self.data, self.folder, self.config, self.record = data, folder, config, record
        self.verbose = verbose
        self.ckpt = CheckpointManager(folder.path, keep=config.keep_checkpoints)
        self.found = self.ckpt.load_latest() if resume else None
        if resume and self.found is None:  # killed before the first checkpoint: start over
            self.log(f"no readable checkpoint in {self.ckpt.dir}; starting from the first step")
        self.spec = get_spec(config.model)
        self.precision = resolve_precision(config.precision, self.spec.recipe.get("cpu_bf16", True))
        backend.seed_everything(config.seed, config.deterministic)
        import keras

        keras.config.set_dtype_policy(self.precision)
        kwargs = dict(config.model_args)
        # where the first weights come from: a checkpoint, another run, or the model's own
        self.start_from = config.init_from if self.found is None else None
        if self.spec.pretrained:  # a checkpoint (or run) holds every weight: none to fetch
            kwargs["weights"] = "none" if self.found or self.start_from else config.weights
        self.process, self.processes = backend.process_info()
        self.chief = self.process == 0  # only process 0 of a data-parallel job writes files
        self.devices = backend.data_parallel(True)  # before any variable exists
        if self.devices > 1:
            check_data_parallel(config, self.spec, self.devices)
        x_train = data.arrays["train"][0]
        self.model = create_model(
            config.model, (*config.image_size, 3), len(data.class_names), **kwargs
        )
        self.spec.init_from_data(self.model, x_train, config.seed)
        if self.start_from:
            load_initial_weights(self.model, self.start_from)
            self.log(f"starting from the weights of {self.start_from}")
        self.steps = steps_of(len(x_train), config.batch_size)
        self.phases = plan_phases(config, self.spec.pretrained, self.spec.recipe)
        self.stop = StopRule(config.epochs, config.patience, (config.max_time or 0) * 60 or None)
        self.phase: Phase | None = None
        self.fit_model = self.model  # what model.fit trains: the head alone in a head phase
        self.optimizer: Any = None
        self.plan: Any = None
        self.host_rate = True  # the trainer assigns each step's rate (else the optimizer does)
        self.features: dict[str, np.ndarray] = {}  # "train": (views, N, D), "val": (N, D)
        self.feature_pass: dict[str, float] | None = None  # images, seconds, images/s
        self.t_start = 0.0
        self.nan_step: int | None = None

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def phase_at(self, epoch: int) -> Phase:
        return next((p for p in self.phases if p.start <= epoch < p.end), self.phases[-1])

    # ---- phases ------------------------------------------------------------------------------
    def enter(self, phase: Phase) -> None:
        """Set up ``phase``: its trainable layers, data form and a fresh optimizer."""
        import keras

        from imgcls.models import applications as apps

        if phase.name == "head":  # features are computed when the first epoch needs them
            self.model.get_layer("backbone").trainable = False
            self.fit_model = apps.head_model(self.model)
        elif phase.name == "finetune":
            n = apps.set_finetune_layers(self.model, self.spec.recipe.get("finetune_fraction", 0.2))
            self.log(f"fine-tuning the top {n} layers of the backbone and the head")
            self.fit_model = self.model
        c = self.config
        self.optimizer, self.plan = build_optimizer(
            c, self.spec.recipe, self.steps, epochs=phase.epochs, lr=phase.lr
        )
        self.fit_model.compile(
            optimizer=self.optimizer,
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=c.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
        self.optimizer.build(self.fit_model.trainable_variables)
        # JAX sets the rate inside its compiled step unless a clock steers it (see plan_in_graph)
        self.host_rate = backend.name() != "jax" or bool(self.stop.max_time_s or phase.budget_s)
        if not self.host_rate:
            plan_in_graph(self.optimizer, self.plan)
        self.phase = phase

    def compute_features(self) -> None:
        """Run the frozen backbone once over every training view and validation image."""
        from imgcls.train.features import PassProgress, compute_features, feature_extractor

        c, views = self.config, self.spec.recipe.get("feature_views", 1)
        x, xv = self.data.arrays["train"][0], self.data.arrays["val"][0]
        progress = PassProgress("features", views * len(x) + len(xv), enabled=self.verbose)
        extractor = feature_extractor(self.model, (*c.image_size, 3))
        self.features["train"] = compute_features(extractor, x, views, c.augment, c.seed, progress)
        if len(xv):
            self.features["val"] = compute_features(extractor, xv, 1, (), c.seed, progress)[0]
        progress.close()
        seconds = time.perf_counter() - progress.t0
        self.feature_pass = {
            "images": progress.done,
            "seconds": round(seconds, 2),
            "images_per_s": round(progress.done / max(seconds, 1e-9), 1),
        }

    def datasets(self, epoch: int, skip: int):
        """The epoch's training batches and the validation batches, in the phase's form."""
        from imgcls.data.pipeline import EpochPlan, eval_dataset, train_dataset
        from imgcls.train.features import epoch_features

        c, recipe = self.config, self.spec.recipe
        (x, y), (xv, yv) = self.data.arrays["train"], self.data.arrays["val"]
        n_classes = len(self.data.class_names)
        augment: tuple[str, ...] = c.augment or ()
        if self.phase.name == "head":
            x, augment = epoch_features(self.features["train"], c.seed, epoch), ()
            xv = self.features.get("val", xv[:0])
        weights = class_weights(y, n_classes) if c.class_weight == "balanced" else None
        fraction = recipe.get("translate_fraction")
        shard = (self.process, self.processes)
        plan = EpochPlan(
            c.batch_size, c.seed, epoch, augment, skip,
            translate=max(1, round(min(c.image_size) * fraction)) if fraction else None,
            alternate_flip=recipe.get("alternate_flip", False), shard=shard,
        )  # fmt: skip
        ds = train_dataset(x, y, plan, weights, n_classes)
        val = eval_dataset(xv, yv, c.batch_size, n_classes, shard) if len(xv) else None
        return ds, val

    # ---- loop --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        counts = self.data.counts()
        c = self.config
        self.log(
            f"data: {len(self.data.class_names)} classes, {counts['train']} train / "
            f"{counts['val']} val / {counts['test']} test images at {c.image_size[0]}x{c.image_size[1]}"
        )
        state = self.initial_state()
        weights = ""
        if self.start_from:
            weights = f", weights of {self.start_from}"
        elif self.spec.pretrained:
            from imgcls.models.applications import weights_source

            weights = f", {weights_source(c.model, c.weights)}"
        plan = " then ".join(f"{p.epochs} {p.name}" for p in self.phases)
        self.log(
            f"model {c.model}{weights}: {self.model.count_params():,} parameters, precision "
            f"{self.precision}, epochs: {plan}, {self.steps} steps of {min(c.batch_size, counts['train'])}"
            + (
                f" over {self.devices} devices in {self.processes} processes"
                if self.devices > 1
                else ""
            )
        )
        self.loop(state)
        return self.finish(state)

    def initial_state(self) -> TrainState:
        if self.found is None:
            return TrainState()
        path, arrays = self.found
        saved = TrainState.from_dict(peek_state(arrays), str(path))
        self.enter(self.phase_at(saved.epoch))
        # A checkpoint from the previous phase holds that phase's optimizer; the new phase starts
        # with a fresh one, exactly as an uninterrupted run does.
        restore(self.model, self.optimizer, arrays, optimizer_too=saved.phase == self.phase.name)
        if saved.stopped == "max_time":
            saved.stopped = None  # resuming is the request to go on (under the new --max-time)
        self.log(f"resumed from {path.name}: epoch {saved.epoch + 1}, step {saved.step_in_epoch}")
        return saved

    def loop(self, state: TrainState) -> None:
        from imgcls.train.callbacks import Progress, StepHook

        c = self.config
        n_train = len(self.data.arrays["train"][0])
        progress = Progress(c.epochs, self.steps, min(c.batch_size, n_train), enabled=self.verbose)
        hook = StepHook(lambda s, logs: self.after_step(state, s, logs), self.before_step(state))
        extra = tensorboard_callbacks(self.folder) if c.tensorboard else []
        self.t_start = time.perf_counter() - state.elapsed_s
        while state.epoch < c.epochs and not state.stopped:
            epoch, skip = state.epoch, state.step_in_epoch
            phase = self.phase_at(epoch)
            if phase != self.phase:
                self.enter(phase)
            if phase.name == "head" and not self.features:
                self.compute_features()
            if state.phase != phase.name:  # a phase's time budget counts from its start
                state.phase, state.phase_started_s = phase.name, self.elapsed()
            ds, val = self.datasets(epoch, skip)
            progress.begin(epoch, skip)
            hook.first_step = skip
            try:
                fit = self.fit_model.fit(
                    ds, epochs=epoch + 1, initial_epoch=epoch, validation_data=val,
                    callbacks=[progress, hook, *extra], shuffle=False, verbose=0,
                )  # fmt: skip
            except Exception as e:  # noqa: BLE001 - re-raised unless a known resource failure
                raise_resource_error(e, c.batch_size)
                raise
            if self.nan_step is not None:
                raise ImgclsError(
                    f"loss became NaN at epoch {epoch + 1}, step {self.nan_step}; the last good "
                    f"checkpoint is in {self.ckpt.dir}. Start a new run with a lower --lr (now {c.lr})"
                )
            state.elapsed_s = self.elapsed()
            if state.stopped:  # a budget ran out mid-epoch (fit synced the variables at its end)
                self.save_checkpoint(state)
                self.log_stop(state)
                break
            self.end_epoch(state, fit.history, progress, hook.data_wait_share)

    def elapsed(self) -> float:
        """Seconds of training so far; in a data-parallel job with a time budget, process 0's
        (one small broadcast per call), so every process stops at the same step."""
        seconds = time.perf_counter() - self.t_start
        return backend.agreed(seconds) if self.processes > 1 and self.stop.max_time_s else seconds

    def before_step(self, state: TrainState):
        """The callback that sets each step's learning rate from the phase's plan (and clock)."""

        def set_rate(step: int) -> None:
            if not self.host_rate:
                return
            used = self.stop.time_used(state, self.phase, self.elapsed())
            step = state.epoch * self.steps + step - self.phase.start * self.steps
            self.sync_variables()
            self.optimizer.learning_rate = self.plan(step, used)
            if hasattr(self.optimizer, "progress"):  # lookahead averages harder as lr decays
                self.optimizer.progress.assign(self.plan.progress(step, used))

        return set_rate

    def sync_variables(self) -> None:
        """Make the Keras variables current mid-epoch. JAX's fit keeps the training state in
        its own arrays and reads the variables again only after a sync: without one, a new
        learning rate would be ignored and a mid-epoch checkpoint would hold stale weights."""
        sync = getattr(self.fit_model, "jax_state_sync", None)
        if sync is not None:
            sync()

    def after_step(self, state: TrainState, step: int, logs: dict) -> None:
        state.step_in_epoch = step
        state.global_step = state.epoch * self.steps + step
        loss = float(logs["loss"]) if "loss" in logs else None
        reason = self.stop.after_step(state, self.phase, loss, self.elapsed())
        if reason == "nan":
            self.nan_step = step
        elif reason is not None and step < self.steps:
            state.stopped = reason
        elif (
            self.config.checkpoint_every
            and state.global_step % self.config.checkpoint_every == 0
            and step < self.steps
        ):
            state.elapsed_s = self.elapsed()
            self.sync_variables()
            self.save_checkpoint(state)
            return
        else:
            return
        self.fit_model.stop_training = True

    def end_epoch(
        self, state: TrainState, logs: dict[str, list], progress, data_wait: float
    ) -> None:
        row = {
            "epoch": state.epoch + 1,
            **{k: float(v[-1]) for k, v in logs.items()},
            "lr": float(self.optimizer.learning_rate),
            "elapsed_s": round(state.elapsed_s, 2),
            "data_wait": round(data_wait, 4),  # share of step time spent waiting for a batch
        }
        n_train = len(self.data.arrays["train"][0])
        progress.end(row, self.steps * min(self.config.batch_size, n_train))
        state.history.append(row)
        state.epoch += 1
        state.step_in_epoch = 0
        state.global_step = state.epoch * self.steps
        monitored = row.get("val_loss", row["loss"])
        improved = self.stop.after_epoch(state, self.phase, monitored, state.elapsed_s)
        if state.stopped:
            self.log_stop(state)
        keys = list(dict.fromkeys(k for r in state.history for k in r))
        if self.chief:
            rows = [[r.get(k, "") for k in keys] for r in state.history]
            write_csv(self.folder.history, keys, rows)
        self.save_checkpoint(state, best=improved)

    def save_checkpoint(self, state: TrainState, best: bool = False) -> None:
        if self.chief:
            self.ckpt.save(self.model, self.optimizer, state.to_dict(), best=best)

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

    # ---- end ---------------------------------------------------------------------------------
    def float32_classifier(self):
        """The trained model in float32, the precision every bundle is saved in; a model that
        trained in mixed precision gets its BatchNorm statistics recomputed in float32."""
        from imgcls.bundle import float32_copy
        from imgcls.train.precision import recalibrate_batchnorm

        model = float32_copy(self.model)
        if model is not self.model:
            n = recalibrate_batchnorm(model, self.data.arrays["train"][0], self.config.seed)
            if n:
                self.log(f"recomputed {n} BatchNorm layers' statistics in float32")
        return model

    def finish(self, state: TrainState) -> TrainResult:
        """Write the bundle, then score the test split through it, as ``evaluate`` would."""
        from imgcls.bundle import BundleMeta, library_versions, save_bundle, write_meta
        from imgcls.data.decode import PREPROCESSING
        from imgcls.evaluate.metrics import compute_metrics
        from imgcls.predict import Predictor

        c = self.config
        stopped = state.stopped or "completed"
        backend.data_parallel(False)  # the bundle and its test score are process 0's alone
        if not self.chief:
            return TrainResult(self.folder.path, state.history, stopped, None, self.data.left_out)
        meta = BundleMeta(
            class_names=self.data.class_names,
            image_size=tuple(c.image_size),
            preprocessing=dict(PREPROCESSING),
            tta=c.tta,
            config=c.to_dict(),
            data=self.record["data"],
            versions=library_versions(),
            metrics={
                "test_accuracy": None,
                "epochs_run": state.epoch,
                "stopped": stopped,
                "precision": self.precision,
                "train_seconds": round(state.elapsed_s, 2),
                "devices": self.devices,
                "processes": self.processes,
                **({"feature_pass": self.feature_pass} if self.feature_pass else {}),
            },
        )
        save_bundle(self.folder.path, self.float32_classifier(), meta)
        self.log(f"saved {self.folder.model}")
        xt, yt = self.data.arrays["test"]
        test_metrics = None
        if len(xt):
            probs = Predictor(self.folder.path, meta=meta).predict_pixels(xt)
            test_metrics = compute_metrics(yt, probs, self.data.class_names)
            meta.metrics["test_accuracy"] = test_metrics["accuracy"]
            write_meta(self.folder.path, meta)
            tta = "" if c.tta == "none" else f", test-time augmentation {c.tta}"
            self.log(f"test accuracy: {test_metrics['accuracy']:.4f} ({len(xt)} images{tta})")
        return TrainResult(
            self.folder.path, state.history, stopped, test_metrics, self.data.left_out
        )
