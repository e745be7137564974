"""``imgcls tune``: search training settings on the validation split, touch the test split once.

The data is split once (``DIR/split.csv``, stratified and seeded as ``imgcls train`` splits).
KerasTuner's oracle proposes each trial's settings; the trial is an ordinary ``imgcls train``
run in its own subprocess (``DIR/trials/trial_N``) on the train and validation images alone
(``DIR/search_split.csv`` leaves the test images out, so they are never even decoded), scored
by its final validation accuracy. A crash or a leak ends one trial, not the search, and the
searching process holds no model, so its memory stays flat however many trials run.

The oracle's state and every trial are written atomically after each change (KerasTuner's own
writes are not: keras-team/keras-tuner#835, #987), and a trial's run folder checkpoints as any
run does, so after SIGKILL ``tune(out=DIR, resume=True)`` keeps the finished trials, continues
the running one from its last checkpoint and proposes the same next trials.

At the end the best settings are retrained on train+validation (``final="retrain"``) or the best
trial is kept (``final="keep"``) into ``DIR/best``, a normal run folder, and the test split is
evaluated exactly once; ``DIR/tune.json`` records when and how often it was read.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.bundle import RunFolder
from imgcls.errors import ImgclsError, check
from imgcls.io import write_json
from imgcls.tune import space as spaces
from imgcls.tune.final import finish
from imgcls.tune.record import RECORD_FILE, TuneRecord, WorkerInfo
from imgcls.tune.report import write_trials_csv
from imgcls.tune.settings import TuneSettings
from imgcls.tune.trials import (
    MAX_FAILED_IN_A_ROW,
    OBJECTIVE,
    TRIAL_FIGURES,
    make_oracle,
    now,
    read_json,
    run_imgcls,
    serve_oracle,
)

TUNER_ID = "chief"


def tune(
    data: str | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    chief: str | None = None,
    worker: str | None = None,
    worker_id: str | None = None,
    verbose: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Search training settings for ``data`` into the folder ``out``; see the module docstring.

    Args:
        data: labelled data as ``imgcls train`` takes it.
        out: the search's folder (new, or empty); with ``resume`` an existing search's.
        resume: continue the search in ``out``: finished trials are kept, the running one
            continues from its checkpoint. With ``chief``, a chief that died serves its oracle
            again (the trials that were running are proposed again); with ``worker``, a worker
            continues in its own folder (a trial it had begun continues from its checkpoint).
        chief: ``HOST:PORT`` to serve the oracle on, for workers on other hosts to run the
            trials (KerasTuner's chief/worker protocol, gRPC); the chief trains only ``best/``.
        worker: ``HOST:PORT`` of a chief to take trials from; ``out`` holds this worker's
            trials. A worker is started with the chief's DATA and settings.
        worker_id: this worker's name (default: host name and process id).
        verbose: print one progress line per trial to stderr.
        **settings: the fields of :class:`TuneSettings` (model, algorithm, trials, max_time,
            space, seed, final, val_split, test_split, precision, backend).

    Returns:
        The content of ``out/tune.json``.

    Raises:
        ImgclsError: bad settings, a space file that does not fit the model, or ``resume`` on a
            folder that is not a search. Nothing is written then.
    """
    check(out is not None, "`out` (the search's folder) is required")
    check(not (chief and worker), "`--chief` and `--worker` exclude each other")
    for name, address in (("chief", chief), ("worker", worker)):
        host, _, port = (address or "h:1").rpartition(":")
        check(host and port.isdigit(), f"`--{name}` must be HOST:PORT. Received: {address!r}")
    folder = Path(out)
    if resume:
        check(
            not settings and data is None,
            "--resume takes the search's folder (and --chief or --worker) and nothing else",
        )
        record = _resumed_record(folder, worker)
        config = TuneSettings(**record.settings)
        worker_id = worker_id or (record.worker.id if record.worker else None)
    else:
        record, config = None, _new_settings(folder, data, settings, chief)
    search = _Search(folder, config, record, verbose)
    if worker:
        return search.work(worker, worker_id or f"{socket.gethostname()}-{os.getpid()}")
    return search.run(chief)


def _resumed_record(folder: Path, worker: str | None) -> TuneRecord:
    """The record of the search in ``folder``, checked to be a worker's exactly when
    ``worker`` is given."""
    record = TuneRecord.read(folder)
    was = record.worker
    check(
        bool(worker) == bool(was),
        f"--resume {folder}: "
        + (
            f"this is worker {was.id}'s folder; continue it with --worker {was.chief}"
            if was
            else "this is a search's folder, not a worker's; drop --worker"
        ),
    )
    return record


def _new_settings(
    folder: Path, data: str | None, settings: dict, chief: str | None
) -> TuneSettings:
    """The checked settings of a new search into the empty folder ``folder``."""
    check(data is not None, "DATA is required (or --resume DIR)")
    unknown = set(settings) - set(TuneSettings.__dataclass_fields__)
    if unknown:
        raise ImgclsError(f"unknown tune setting {sorted(unknown)[0]!r}")
    config = TuneSettings(data=_absolute(data), **settings)
    config.space = _absolute(config.space) if config.space else None
    config.validate()
    check(
        not (chief and config.final == "keep"),
        "`--final keep` needs the trials' folders, which a chief's workers hold: retrain instead",
    )
    check(
        not folder.exists() or not any(folder.iterdir()),
        f"`--out` {folder} is not empty; continue that search with --resume {folder} "
        "or choose a new folder",
    )
    return config


class _Search:
    """One search: its folder, settings, split, space and oracle; driven by :meth:`run`."""

    def __init__(
        self, folder: Path, config: TuneSettings, record: TuneRecord | None, verbose: bool
    ):
        from imgcls.config import TrainConfig
        from imgcls.data.sources import load_source
        from imgcls.data.split import assign_splits, read_split_csv
        from imgcls.train.resolve import resolve
        from imgcls.train.rundata import data_facts

        self.folder, self.config, self.verbose = folder, config, verbose
        c = config
        self.images = load_source(c.data, corrections=c.corrections)
        if record is None:
            splits = assign_splits(
                self.images.labels, c.val_split, c.test_split, c.seed, self.images.splits
            )
        else:
            splits = read_split_csv(self.path("split.csv"), self.images)
        self.splits = splits
        check((splits == "val").any(), f"DATA {c.data}: no validation images to score trials on")
        train = TrainConfig(
            model=c.model, seed=c.seed, val_split=c.val_split, test_split=c.test_split
        )
        resolved = resolve(train, data_facts(self.images, splits, train)).config
        self.model = resolved.model
        self.space = spaces.model_space(self.model, c.space)
        epochs = self.space.pop("epochs") if c.algorithm == "hyperband" else None
        self.max_epochs = int(epochs.high) if epochs else resolved.epochs  # Hyperband's most
        self.space, self.defaults = spaces.first_trial(self.model, self.space, asdict(resolved))
        self.record = record or TuneRecord(
            settings={**asdict(c), "model": self.model},
            started_at=now(),
            space={name: p.describe() for name, p in self.space.items()},
            defaults=self.defaults,
        )
        self.t0 = time.perf_counter() - self.record.elapsed_s
        self.oracle: Any = None
        self.tuner_id, self.worker, self.done = TUNER_ID, False, 0

    # ---- files ---------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.folder.joinpath(*parts)

    def save_record(self) -> None:
        self.record.elapsed_s = round(time.perf_counter() - self.t0, 1)
        self.record.save(self.folder)

    def write_splits(self) -> None:
        from imgcls.data.split import write_split_csv

        self.folder.mkdir(parents=True, exist_ok=True)
        write_split_csv(self.path("split.csv"), self.images, self.splits)
        searched = self.splits != "test"
        write_split_csv(
            self.path("search_split.csv"), self.images.subset(searched), self.splits[searched]
        )
        final = np.where(self.splits == "val", "train", self.splits)
        write_split_csv(self.path("final_split.csv"), self.images.subset(searched), final[searched])

    # ---- the search ----------------------------------------------------------------------------
    def run(self, chief: str | None = None) -> dict[str, Any]:
        """Search here (or serve the oracle to workers at ``chief``), then make ``best/``."""
        self.start()
        self.oracle = make_oracle(self)
        if chief:
            self.record.chief = chief
            self.save_record()
            self.log(f"serving the oracle at {chief}; start workers with --worker {chief}")
            serve_oracle(self.oracle, chief)
            write_trials_csv(self)
        else:
            self.search()
        finish(self)
        return self.record.to_dict()

    def work(self, address: str, worker_id: str) -> dict[str, Any]:
        """Run trials that the chief at ``address`` proposes until it has no more."""
        from keras_tuner.src.distribute.oracle_client import OracleClient

        self.start()
        host, _, port = address.rpartition(":")
        os.environ.update(
            KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=port, KERASTUNER_TUNER_ID=worker_id
        )
        self.tuner_id, self.worker = worker_id, True
        self.oracle = OracleClient(make_oracle(self))
        self.record.worker = WorkerInfo(address, worker_id)
        self.save_record()
        import grpc

        try:
            self.search()
        except grpc.RpcError as e:
            raise ImgclsError(
                f"the chief at {address} stopped answering ({e.code().name}); once it runs "
                f"again (imgcls tune --resume CHIEF_DIR --chief {address}), continue this worker "
                f"with: imgcls tune --resume {self.folder} --worker {address}"
            ) from None
        self.save_record()
        return self.record.to_dict()

    def start(self) -> None:
        if not self.path(RECORD_FILE).is_file():
            self.write_splits()
            self.save_record()

    def search(self) -> None:
        from keras_tuner.engine.trial import TrialStatus

        c = self.config
        while True:
            left = self.time_left()
            if left is not None and left <= 0:
                self.log(f"search stopped: the {c.max_time:g}-minute budget is spent")
                break
            if not self.worker and len(self.oracle.end_order) >= c.trials:
                break
            trial = self.oracle.create_trial(self.tuner_id)
            if trial.status != TrialStatus.RUNNING:
                break
            if int(trial.trial_id) == 0:  # the recipe's own settings come first
                trial.hyperparameters.values = {**trial.hyperparameters.values, **self.defaults}
            values = dict(trial.hyperparameters.values)
            result = self.run_trial(trial.trial_id, values, left)
            if result["status"] == "COMPLETED":  # the oracle keeps what trials.csv shows
                metrics = {k: result[k] for k in (OBJECTIVE, *TRIAL_FIGURES)}
                self.oracle.update_trial(trial.trial_id, metrics)
            trial.status, trial.message = result["status"], result.get("message")
            try:
                self.oracle.end_trial(trial)
            except RuntimeError as e:  # KerasTuner: too many failed trials in a row
                raise ImgclsError(
                    f"{MAX_FAILED_IN_A_ROW} trials in a row failed; the last said: "
                    f"{result.get('message')} ({self.trial_dir(trial.trial_id)}.log)"
                ) from e
            self.done += 1
            self.progress(trial.trial_id, values, result)
            if not self.worker:
                write_trials_csv(self)

    def trial_dir(self, trial_id: str) -> Path:
        return self.path("trials", f"trial_{trial_id}")

    def run_trial(self, trial_id: str, values: dict, left: float | None) -> dict[str, Any]:
        """Train one trial in a subprocess (or finish it after a kill); its result."""
        run = self.trial_dir(trial_id)
        info_path = run / "trial_info.json"
        if info_path.is_file():  # trained before a kill that came before the oracle heard
            return read_json(info_path)
        flags = spaces.train_flags(values)
        start = 0  # epochs already trained by the trial this one continues
        if "tuner/epochs" in values:  # Hyperband decides the epochs
            parent = values.get("tuner/trial_id")
            if parent is not None and RunFolder(self.trial_dir(parent)).meta.is_file():
                # a later round continues its trial's model (on a worker whose disk lacks it,
                # the trial trains from scratch for all its epochs)
                start = int(values["tuner/initial_epoch"])
                flags += ["--init-from", str(self.trial_dir(parent).resolve())]
            flags += ["--epochs", str(int(values["tuner/epochs"]) - start)]
        flags += ["--split-file", str(self.path("search_split.csv").resolve())]
        if left is not None:
            flags += ["--max-time", f"{left / 60:.3f}"]
        t0 = time.perf_counter()
        code, peak_mb, message = self.train(run, flags)
        result: dict[str, Any] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": peak_mb,
            "values": values,
        }
        folder = RunFolder(run)
        if code == 0 and folder.history.is_file():
            rows = folder.read_history()
            score = rows[-1].get(OBJECTIVE, float("nan")) if rows else float("nan")
            meta = folder.read_meta().metrics
            # A trial the search's budget cut short says nothing fair about its settings: the
            # oracle is told it failed (measured: one cut to 37 s scored 0.46 against 0.82).
            why = "cut short by --max-time" if meta["stopped"] == "max_time" else None
            why = why or (None if np.isfinite(score) else "no validation accuracy")
            result.update(
                status="FAILED" if why else "COMPLETED",
                val_accuracy=score if np.isfinite(score) else None,
                epochs_run=meta["epochs_run"] + start,
                message=why,
            )
        else:
            result.update(status="FAILED", val_accuracy=None, message=message)
        write_json(info_path, result)
        return result

    def train(self, run: Path, flags: list[str]) -> tuple[int, float, str]:
        """``imgcls train`` into ``run`` in a subprocess, or ``--resume`` if it has checkpoints;
        its exit status, peak resident memory in MB and its last error line."""
        c = self.config
        if RunFolder(run).checkpoint_files():
            cmd = ["train", "--resume", str(run)]
        else:
            shutil.rmtree(run, ignore_errors=True)  # killed before its first checkpoint
            cmd = ["train", c.data, "--out", str(run), "--model", self.model, "--seed", str(c.seed)]
            cmd += flags
            cmd += ["--corrections", c.corrections] if c.corrections else []
            cmd += ["--precision", c.precision] if c.precision else []
            cmd += ["--backend", c.backend] if c.backend else []
        run.mkdir(parents=True, exist_ok=True)
        return run_imgcls(cmd, run.parent / f"{run.name}.log")

    # ---- progress ------------------------------------------------------------------------------
    def time_left(self) -> float | None:
        if not self.config.max_time:
            return None
        return self.config.max_time * 60 - (time.perf_counter() - self.t0)

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def progress(self, trial_id: str, values: dict, result: dict) -> None:
        best = self.oracle.get_best_trials(1)
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(self.done, 1) * max(self.config.trials - int(trial_id) - 1, 0)
        if self.config.max_time:
            eta = min(eta, max(self.time_left() or 0.0, 0.0))
        settings = " ".join(
            f"{k}={_short(v)}" for k, v in values.items() if not k.startswith("tuner/")
        )
        score = f"{result[OBJECTIVE]:.4f}" if result["status"] == "COMPLETED" else "-"
        score += f" ({result['message']})" if result.get("message") else ""
        best_text = f"{best[0].score:.4f} (trial {int(best[0].trial_id) + 1})" if best else "-"
        self.log(
            f"trial {int(trial_id) + 1}/{self.config.trials} {settings}: {OBJECTIVE} {score}, "
            f"best {best_text}, {result['seconds']:.0f} s, ETA {_clock(eta)}"
        )


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _absolute(path: str | Path) -> str:
    """An existing path made absolute (a resumed search may start elsewhere); else as given
    (a built-in data set's name)."""
    return str(Path(path).resolve()) if Path(path).exists() else str(path)
