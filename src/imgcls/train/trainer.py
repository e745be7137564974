"""The training loop: data -> model -> epochs with checkpoints -> bundle.

``train(DATA, out=RUN)`` reads and splits the data, decodes every image once, builds the
model with its recipe, and trains epoch by epoch. After every epoch (and every
``checkpoint_every`` steps) the whole state is checkpointed atomically, so
``train(resume=True, out=RUN)`` continues exactly where a crash left off. At the end the
model bundle, ``history.csv`` and the test accuracy are written into RUN.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.bundle import write_seen
from imgcls.config import TrainConfig
from imgcls.data.decode import PREPROCESSING
from imgcls.data.pipeline import steps_per_epoch
from imgcls.data.sources import load_source
from imgcls.data.split import assign_splits, read_split_csv, write_split_csv
from imgcls.errors import ImgclsError, check
from imgcls.io import write_csv, write_json
from imgcls.models import get_spec
from imgcls.train.checkpoint import CheckpointManager, RunLock, peek_state, restore
from imgcls.train.setup import build_optimizer, infer_image_size, prepare_arrays, seed_everything

RUN_FILE = "run.json"  # the resolved config and data identity, written before the first step
HISTORY_FILE = "history.csv"
RESUME_SAFE_KEYS = {"max_time", "checkpoint_every", "keep_checkpoints"}  # change nothing computed
FAST_MAX_SIDE = 64  # pixels: up to this size the default model is `fast`, above it `classic`
MIN_ADAPTED_BATCH = 16  # smallest batch a recipe shrinks to on a small data set


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    history: list[dict[str, float]]
    stopped: str  # "completed", "early_stopping" or "max_time"
    test_metrics: dict[str, Any] | None = None
    left_out: list[dict] = field(default_factory=list)


def train(
    data: str | Path | None = None,
    out: str | Path = "runs/latest",
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    verbose: bool = True,
    **overrides: Any,
) -> TrainResult:
    """Train a model on DATA and write the run folder ``out``.

    Args:
        data: a folder per class, a CSV manifest, a prepared folder or a built-in name. With
            ``resume`` it may be left out: the run remembers its data.
        out: the run folder (model bundle, split.csv, history.csv, checkpoints).
        config: a :class:`TrainConfig`; ``overrides`` replace its fields (``epochs=3``).
        resume: continue the run in ``out`` from its newest good checkpoint.
        verbose: print progress and results to stderr.

    Returns:
        A :class:`TrainResult`.

    Example:
        >>> result = imgcls.train("digits", out="runs/digits", epochs=5)   # doctest: +SKIP
        >>> result.test_metrics["accuracy"] > 0.9                         # doctest: +SKIP
        True
    """
    out = Path(out)
    if resume:
        config, data = _resume_config(out, data, overrides)
    else:
        config = (config or TrainConfig()).updated(**overrides)
        check(data is not None, "DATA is required (a folder, a CSV manifest or a built-in name)")
        if config.model is not None:
            get_spec(config.model)  # an unknown name fails before any data is read
        taken = [n for n in (RUN_FILE, "bundle.json", "checkpoints") if (out / n).exists()]
        if taken:
            raise ImgclsError(
                f"--out {out} already holds a run ({taken[0]}); pass --resume to continue it "
                "or choose another --out"
            )
    import keras

    policy = keras.config.dtype_policy()
    try:
        with RunLock(out):
            return _Trainer(data, out, config, resume, verbose).run()
    finally:
        keras.config.set_dtype_policy(
            policy
        )  # the run's precision does not leak into the caller's models


def _resume_config(out: Path, data: Any, overrides: dict[str, Any]) -> tuple[TrainConfig, str]:
    path = out / RUN_FILE
    check(path.is_file(), f"--resume: {out} is not a run folder (no {RUN_FILE})")
    saved = json.loads(path.read_text(encoding="utf-8"))
    config = TrainConfig.from_dict(saved["config"])
    for key, value in overrides.items():
        old = getattr(config, key, None)
        if value is None or value == old or (isinstance(old, tuple) and tuple(value) == old):
            continue
        check(
            key in RESUME_SAFE_KEYS,
            f"--resume: `{key}` differs from the run's ({value!r} vs {old!r}); "
            "resuming with a changed recipe is refused. Start a new run instead",
        )
    config = config.updated(**{k: v for k, v in overrides.items() if k in RESUME_SAFE_KEYS})
    return config, str(data) if data is not None else saved["data"]["argument"]


class _Trainer:
    def __init__(
        self, data: str | Path, out: Path, config: TrainConfig, resume: bool, verbose: bool
    ):
        self.data_arg, self.out, self.resume, self.verbose = str(data), out, resume, verbose
        self.config = config  # completed from the model's recipe once the data is known
        self.ckpt = CheckpointManager(out, keep=self.config.keep_checkpoints)

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    # ---- setup -------------------------------------------------------------------------------
    def load_data(self) -> None:
        c = self.config
        images = load_source(self.data_arg)
        if self.resume:
            splits = read_split_csv(self.out / "split.csv", images)
        else:
            splits = assign_splits(images.labels, c.val_split, c.test_split, c.seed, images.splits)
        size = tuple(c.image_size) if c.image_size else infer_image_size(images)
        self.config.image_size = size
        if c.augment is None:
            self.config.augment = tuple(images.augment)
        self.images, self.splits = images, splits
        self.arrays, self.left_out = prepare_arrays(images, splits, size)
        for issue in self.left_out:
            self.log(f"imgcls: left out {issue['path']}: {issue['kind']}: {issue['detail']}")
        counts = {s: len(self.arrays[s][0]) for s in ("train", "val", "test")}
        check(counts["train"] > 0, f"DATA {self.data_arg}: no training images left after the split")
        self.log(
            f"data: {len(images.class_names)} classes, {counts['train']} train / {counts['val']} val / "
            f"{counts['test']} test images at {size[0]}x{size[1]}"
        )

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for i, label, s in zip(self.images.ids, self.images.labels, self.splits, strict=True):
            h.update(f"{i}\t{label}\t{s}\n".encode())
        return h.hexdigest()

    def write_run_file(self) -> None:
        self.run_info = {
            "config": self.config.to_dict(),
            "data": {
                "argument": self.data_arg,
                "source": self.images.source,
                "class_names": self.images.class_names,
                "fingerprint": self.fingerprint(),
                "n_images": len(self.images),
                "left_out": self.left_out,
                "split_counts": {s: len(self.arrays[s][0]) for s in ("train", "val", "test")},
            },
        }
        if self.resume:
            saved = json.loads((self.out / RUN_FILE).read_text(encoding="utf-8"))
            check(
                saved["data"]["fingerprint"] == self.run_info["data"]["fingerprint"],
                f"--resume: the data at {self.data_arg} differs from what run {self.out} was trained on "
                "(images, labels or split changed); resuming is refused. Start a new run instead",
            )
            return
        self.out.mkdir(parents=True, exist_ok=True)
        write_split_csv(self.out / "split.csv", self.images, self.splits)
        write_seen(self.out, [self.arrays["train"][0], self.arrays["val"][0]])
        write_json(self.out / RUN_FILE, self.run_info)

    def build(self) -> None:
        import keras

        from imgcls.models import create_model
        from imgcls.train.precision import resolve_precision

        c = self.config
        self.spec = get_spec(c.model)
        self.precision = resolve_precision(c.precision)
        seed_everything(c.seed, c.deterministic)
        keras.config.set_dtype_policy(self.precision)
        kwargs = dict(c.model_args)
        if c.weights is not None:
            check(
                self.spec.pretrained,
                f"`weights` applies only to pretrained backbones, not model '{c.model}'. "
                f"Received: weights={c.weights}",
            )
            kwargs["weights"] = c.weights
        self.model = create_model(
            c.model, (*c.image_size, 3), len(self.images.class_names), **kwargs
        )
        self.spec.init_from_data(self.model, self.arrays["train"][0], c.seed)
        self.steps = steps_per_epoch(len(self.arrays["train"][0]), c.batch_size)
        self.phase = None

    def phase_of(self, epoch: int) -> str:
        """``"frozen"`` while a pretrained backbone trains only its head, else ``"train"``."""
        freeze = self.spec.recipe.get("freeze_epochs", 0)
        return "frozen" if freeze and epoch < freeze < self.config.epochs else "train"

    def compile_for(self, epoch: int) -> None:
        """Compile with a fresh optimizer when ``epoch`` starts a new phase (or nothing is compiled yet)."""
        import keras

        phase = self.phase_of(epoch)
        if phase == self.phase:
            return
        c, recipe = self.config, self.spec.recipe
        freeze = recipe.get("freeze_epochs", 0) if self.phase_of(0) == "frozen" else 0
        if freeze:
            self.model.get_layer("backbone").trainable = phase == "train"
        epochs = freeze if phase == "frozen" else c.epochs - freeze
        lr = c.lr * (recipe.get("finetune_lr_factor", 1.0) if freeze and phase == "train" else 1.0)
        self.optimizer, self.plan = build_optimizer(c, recipe, self.steps, epochs=epochs, lr=lr)
        self.phase_first_step = (freeze if freeze and phase == "train" else 0) * self.steps
        self.model.compile(
            optimizer=self.optimizer,
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=c.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
        self.optimizer.build(self.model.trainable_variables)
        self.phase = phase

    # ---- loop --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.ckpt.clean_temporaries()
        self.load_data()
        self.config = _with_recipe(self.config, len(self.arrays["train"][0]))
        self.write_run_file()
        self.build()
        state = self.initial_state()
        self.log(
            f"model {self.config.model}: {self.model.count_params():,} parameters, precision {self.precision}, "
            f"{self.config.epochs} epochs of {self.steps} steps"
        )
        stopped = self.loop(state)
        return self.finish(state, stopped)

    def initial_state(self) -> dict[str, Any]:
        state = {
            "epoch": 0,
            "step_in_epoch": 0,
            "global_step": 0,
            "best": None,
            "best_epoch": None,
            "bad_epochs": 0,
            "history": [],
            "elapsed_s": 0.0,
            "stopped": None,
            "phase": None,
        }
        found = self.ckpt.load_latest() if self.resume else None
        if (
            self.resume and found is None
        ):  # killed before the first checkpoint: same seed, so start over
            self.log(f"no readable checkpoint in {self.ckpt.dir}; starting from the first step")
        if found is None:
            self.compile_for(0)
            return state
        path, arrays = found
        saved = peek_state(arrays)
        self.compile_for(saved["epoch"])
        # A checkpoint from the previous phase holds that phase's optimizer; the new phase starts
        # with a fresh one, exactly as an uninterrupted run does.
        state = restore(
            self.model, self.optimizer, arrays, optimizer_too=saved.get("phase") == self.phase
        )
        if state.get("stopped") == "max_time":
            state["stopped"] = None  # resuming is the request to go on (under the new --max-time)
        self.log(
            f"resumed from {path.name}: epoch {state['epoch'] + 1}, step {state['step_in_epoch']}"
        )
        return state

    def loop(self, state: dict[str, Any]) -> str:
        from imgcls.data.pipeline import eval_dataset, train_dataset
        from imgcls.train.callbacks import Progress, StepHook

        c = self.config
        x, y = self.arrays["train"]
        xv, yv = self.arrays["val"]
        n_classes = len(self.images.class_names)
        val_ds = eval_dataset(xv, yv, c.batch_size, n_classes) if len(xv) else None
        weights = _class_weights(y, n_classes) if c.class_weight == "balanced" else None
        progress = Progress(c.epochs, self.steps, min(c.batch_size, len(x)), enabled=self.verbose)
        self.flags: dict[str, Any] = {}
        hook = StepHook(
            lambda step, logs: self.after_step(state, step, logs),
            before=lambda step: self.before_step(state, step),
        )
        extra = []
        if c.tensorboard:
            import importlib.util

            import keras

            check(
                importlib.util.find_spec("tensorboard") is not None,
                "`--tensorboard` needs the tensorboard package: pip install 'imgcls[tensorboard]'",
            )
            extra.append(keras.callbacks.TensorBoard(log_dir=str(self.out / "tensorboard")))
        t_start = time.perf_counter() - state["elapsed_s"]
        self.t_start = t_start
        while state["epoch"] < c.epochs and not state.get("stopped"):
            epoch, skip = state["epoch"], state["step_in_epoch"]
            self.compile_for(epoch)
            if state.get("phase") != self.phase:  # a phase's time budget counts from its start
                state["phase_started_s"] = time.perf_counter() - t_start
            state["phase"] = self.phase
            recipe = self.spec.recipe
            ds = train_dataset(
                x,
                y,
                c.batch_size,
                c.seed,
                epoch,
                c.augment,
                skip,
                weights,
                n_classes,
                translate=_translate_pixels(recipe, c.image_size),
                alternate_flip=recipe.get("alternate_flip", False),
            )
            progress.begin(epoch, skip)
            hook.first_step = skip
            try:
                fit = self.model.fit(
                    ds,
                    epochs=epoch + 1,
                    initial_epoch=epoch,
                    validation_data=val_ds,
                    callbacks=[progress, hook, *extra],
                    shuffle=False,
                    verbose=0,
                )
            except Exception as e:  # noqa: BLE001 - re-raised unless it is a known resource failure
                _raise_resource_error(e, c.batch_size)
                raise
            if self.flags.get("nan"):
                raise ImgclsError(
                    f"loss became NaN at epoch {epoch + 1}, step {self.flags['nan']}; the last good "
                    f"checkpoint is in {self.ckpt.dir}. Start a new run with a lower --lr (now {c.lr})"
                )
            state["elapsed_s"] = time.perf_counter() - t_start
            if self.flags.get("max_time"):
                state["stopped"] = "max_time"
                self.ckpt.save(self.model, self.optimizer, state)
                self.log(
                    f"stopped: --max-time {c.max_time} min reached at epoch {epoch + 1}, step {state['step_in_epoch']}"
                )
                break
            self.end_epoch(state, fit.history, progress)
        return state.get("stopped") or "completed"

    def before_step(self, state: dict[str, Any], step: int) -> None:
        """Set the step's learning rate from the plan (and, under ``--max-time``, the clock)."""
        c = self.config
        time_used = 0.0
        if c.max_time:
            started = state.get("phase_started_s", 0.0)
            elapsed = time.perf_counter() - self.t_start - started
            time_used = elapsed / max(c.max_time * 60 - started, 1e-9)
        step = state["epoch"] * self.steps + step - self.phase_first_step
        self.optimizer.learning_rate = self.plan(step, time_used)
        if hasattr(self.optimizer, "progress"):  # lookahead averages harder as the rate decays
            self.optimizer.progress.assign(self.plan.progress(step, time_used))

    def after_step(self, state: dict[str, Any], step: int, logs: dict) -> None:
        c = self.config
        state["step_in_epoch"] = step
        state["global_step"] = state["epoch"] * self.steps + step
        if "loss" in logs and not math.isfinite(float(logs["loss"])):
            self.flags["nan"] = step
            self.model.stop_training = True
            return
        if (
            c.max_time
            and time.perf_counter() - self.t_start > c.max_time * 60
            and step < self.steps
        ):
            self.flags["max_time"] = True
            self.model.stop_training = True
            return
        if (
            c.checkpoint_every
            and state["global_step"] % c.checkpoint_every == 0
            and step < self.steps
        ):
            state["elapsed_s"] = time.perf_counter() - self.t_start
            self.ckpt.save(self.model, self.optimizer, state)

    def end_epoch(self, state: dict[str, Any], logs: dict[str, list], progress) -> None:
        c = self.config
        row = {
            "epoch": state["epoch"] + 1,
            **{k: float(v[-1]) for k, v in logs.items()},
            "lr": float(self.optimizer.learning_rate),
            "elapsed_s": round(state["elapsed_s"], 2),
        }
        progress.end(row, self.steps * min(c.batch_size, len(self.arrays["train"][0])))
        state["history"].append(row)
        state["epoch"] += 1
        state["step_in_epoch"] = 0
        state["global_step"] = state["epoch"] * self.steps
        monitored = row.get("val_loss", row["loss"])
        improved = state["best"] is None or monitored < state["best"]
        if improved:
            state["best"], state["best_epoch"], state["bad_epochs"] = monitored, row["epoch"], 0
        else:
            state["bad_epochs"] += 1
        if c.patience and state["bad_epochs"] >= c.patience and state["epoch"] < c.epochs:
            state["stopped"] = "early_stopping"
            self.log(
                f"early stopping: no val_loss improvement for {c.patience} epochs (best epoch {state['best_epoch']})"
            )
        if (
            c.max_time
            and state["elapsed_s"] > c.max_time * 60
            and state["epoch"] < c.epochs
            and not state["stopped"]
        ):
            state["stopped"] = "max_time"
            self.log(f"stopped: --max-time {c.max_time} min reached after epoch {state['epoch']}")
        self.write_history(state["history"])
        self.ckpt.save(self.model, self.optimizer, state, best=improved)

    def write_history(self, history: list[dict]) -> None:
        keys = list(dict.fromkeys(k for row in history for k in row))
        write_csv(
            self.out / HISTORY_FILE, keys, [[row.get(k, "") for k in keys] for row in history]
        )

    # ---- end ---------------------------------------------------------------------------------
    def finish(self, state: dict[str, Any], stopped: str) -> TrainResult:
        from imgcls.bundle import BundleMeta, library_versions, save_bundle
        from imgcls.evaluate.metrics import compute_metrics
        from imgcls.predict import predict_probs

        xt, yt = self.arrays["test"]
        test_metrics = None
        if len(xt):
            probs = predict_probs(
                self.model, xt, self.config.tta, batch_size=self.config.batch_size
            )
            test_metrics = compute_metrics(yt, probs, self.images.class_names)
            tta = "" if self.config.tta == "none" else f", test-time augmentation {self.config.tta}"
            self.log(f"test accuracy: {test_metrics['accuracy']:.4f} ({len(xt)} images{tta})")
        meta = BundleMeta(
            class_names=self.images.class_names,
            image_size=tuple(self.config.image_size),
            preprocessing=dict(PREPROCESSING),
            tta=self.config.tta,
            config=self.config.to_dict(),
            data=self.run_info["data"],
            versions=library_versions(),
            metrics={
                "test_accuracy": test_metrics["accuracy"] if test_metrics else None,
                "epochs_run": state["epoch"],
                "stopped": stopped,
                "precision": self.precision,
                "train_seconds": round(state["elapsed_s"], 2),
            },
        )
        save_bundle(self.out, self.model, meta)
        self.log(f"saved {self.out}/model.keras")
        return TrainResult(self.out, state["history"], stopped, test_metrics, self.left_out)


def _with_recipe(config: TrainConfig, n_train: int) -> TrainConfig:
    """Fill fields left unset: the model from the image size, the rest from the model's recipe.

    A recipe with ``min_steps_per_epoch`` shrinks its batch on small data sets (to a power of
    two, at least 16) and scales its learning rate with it (the linear scaling rule), unless
    the batch size or learning rate were given.
    """
    if config.model is None:
        config = config.updated(
            model="fast" if max(config.image_size) <= FAST_MAX_SIDE else "classic"
        )
    recipe = get_spec(config.model).recipe
    fills = {
        k: recipe[k]
        for k in ("epochs", "batch_size", "lr", "label_smoothing", "weight_decay", "tta")
        if getattr(config, k) is None and k in recipe
    }
    defaults = {
        "epochs": 10,
        "batch_size": 64,
        "lr": 1e-3,
        "label_smoothing": 0.0,
        "weight_decay": 0.0,
        "tta": "none",
    }
    fills.update(
        {k: v for k, v in defaults.items() if getattr(config, k) is None and k not in fills}
    )
    if "tta" in fills:  # test-time augmentation only from what training showed the model
        parts = [
            a for a in ("flip", "translate") if a in fills["tta"] and a in (config.augment or ())
        ]
        fills["tta"] = "_".join(parts) or "none"
    min_steps = recipe.get("min_steps_per_epoch")
    if min_steps and "batch_size" in fills and n_train // fills["batch_size"] < min_steps:
        batch = max(MIN_ADAPTED_BATCH, 2 ** int(math.log2(max(n_train / min_steps, 1))))
        if "lr" in fills:
            fills["lr"] = fills["lr"] * batch / fills["batch_size"]
        fills["batch_size"] = batch
    return config.updated(**fills)


def _translate_pixels(recipe: dict[str, Any], image_size: tuple[int, int]) -> int | None:
    """The recipe's largest random shift in pixels (``translate_fraction`` of the shorter side)."""
    fraction = recipe.get("translate_fraction")
    return max(1, round(min(image_size) * fraction)) if fraction else None


def _class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)


def _raise_resource_error(e: Exception, batch_size: int) -> None:
    name = type(e).__name__
    if name == "ResourceExhaustedError" or isinstance(e, MemoryError):
        raise ImgclsError(
            f"out of memory with --batch-size {batch_size}; the last good checkpoint is intact. "
            f"Free memory and --resume the run, or start a new run with --batch-size "
            f"{max(1, batch_size // 2)}"
        ) from None
