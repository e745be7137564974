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

import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import ImgclsError, check
from imgcls.io import write_json
from imgcls.tune import space as spaces

ALGORITHMS = ("bayesian", "hyperband", "random")
FINALS = ("retrain", "keep")
OBJECTIVE = "val_accuracy"
TUNER_ID = "chief"
MAX_FAILED_IN_A_ROW = 3  # consecutive failed trials that end the search (KerasTuner's default)


@dataclass
class TuneSettings:
    """What a search was asked to do; stored in ``tune.json`` so ``--resume`` repeats it."""

    data: str
    model: str | None = None
    algorithm: str = "bayesian"
    trials: int = 10
    max_time: float | None = None  # minutes for the trials (the final run comes on top)
    space: str | None = None
    seed: int = 0
    final: str = "retrain"
    val_split: float = 0.1
    test_split: float = 0.1
    precision: str | None = None
    backend: str | None = None

    def validate(self) -> TuneSettings:
        check(
            self.algorithm in ALGORITHMS,
            f"`algorithm` must be one of {list(ALGORITHMS)}. Received: {self.algorithm!r}",
        )
        check(
            isinstance(self.trials, int) and not isinstance(self.trials, bool) and self.trials > 0,
            f"`trials` must be a positive integer. Received: trials={self.trials!r}",
        )
        check(
            self.max_time is None or (isinstance(self.max_time, int | float) and self.max_time > 0),
            f"`max_time` must be a positive number of minutes. Received: max_time={self.max_time!r}",
        )
        check(
            self.final in FINALS, f"`final` must be one of {list(FINALS)}. Received: {self.final!r}"
        )
        check(
            self.val_split > 0,
            "`val_split` must be above 0: the search scores trials on the validation split",
        )
        return self


def tune(
    data: str | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    verbose: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Search training settings for ``data`` into the folder ``out``; see the module docstring.

    Args:
        data: labelled data as ``imgcls train`` takes it.
        out: the search's folder (new, or empty); with ``resume`` an existing search's.
        resume: continue the search in ``out``: finished trials are kept, the running one
            continues from its checkpoint.
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
    folder = Path(out)
    if resume:
        record = _read_record(folder)
        config = TuneSettings(**record["settings"])
        check(not settings and data is None, "--resume takes the search's folder and nothing else")
    else:
        check(data is not None, "DATA is required (or --resume DIR)")
        unknown = set(settings) - set(TuneSettings.__dataclass_fields__)
        if unknown:
            raise ImgclsError(f"unknown tune setting {sorted(unknown)[0]!r}")
        config = TuneSettings(data=str(data), **settings).validate()
        check(
            not folder.exists() or not any(folder.iterdir()),
            f"`--out` {folder} is not empty; continue that search with --resume {folder} "
            "or choose a new folder",
        )
        record = None
    return _Search(folder, config, record, verbose).run()


def _read_record(folder: Path) -> dict[str, Any]:
    path = folder / "tune.json"
    check(path.is_file(), f"--resume {folder}: not a tuning run (no {path.name})")
    try:
        record = _read_json(path)
    except (OSError, ValueError) as e:
        raise ImgclsError(f"--resume {folder}: {path.name} is unreadable ({e})") from None
    check(
        isinstance(record, dict) and record.get("kind") == "imgcls-tune" and "settings" in record,
        f"--resume {folder}: {path.name} is not an imgcls tuning record",
    )
    return record


class _Search:
    """One search: its folder, settings, split, space and oracle; driven by :meth:`run`."""

    def __init__(self, folder: Path, config: TuneSettings, record: dict | None, verbose: bool):
        from imgcls.config import TrainConfig
        from imgcls.data.sources import load_source
        from imgcls.data.split import assign_splits, read_split_csv
        from imgcls.train.rundata import data_facts

        self.folder, self.config, self.verbose = folder, config, verbose
        c = config
        self.images = load_source(c.data)
        if record is None:
            splits = assign_splits(
                self.images.labels, c.val_split, c.test_split, c.seed, self.images.splits
            )
        else:
            splits = read_split_csv(folder / "split.csv", self.images)
        self.splits = splits
        check((splits == "val").any(), f"DATA {c.data}: no validation images to score trials on")
        train = TrainConfig(
            model=c.model, seed=c.seed, val_split=c.val_split, test_split=c.test_split
        )
        resolved = train.resolve(data_facts(self.images, splits, train)).config
        self.model = resolved.model
        self.space = spaces.model_space(self.model, c.space)
        epochs = self.space.pop("epochs") if c.algorithm == "hyperband" else None
        self.max_epochs = int(epochs.high) if epochs else resolved.epochs  # Hyperband's most
        self.space, self.defaults = spaces.first_trial(self.model, self.space, asdict(resolved))
        self.record = record or {
            "kind": "imgcls-tune",
            "settings": {**asdict(c), "model": self.model},
            "started_at": _now(),
            "space": {name: p.describe() for name, p in self.space.items()},
            "defaults": self.defaults,
            "best": None,
            "test": {"reads": 0},
        }
        self.t0 = time.perf_counter() - self.record.get("elapsed_s", 0.0)
        self.oracle = None

    # ---- files ---------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.folder.joinpath(*parts)

    def save_record(self) -> None:
        self.record["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        write_json(self.path("tune.json"), self.record)

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
    def run(self) -> dict[str, Any]:
        if not self.path("tune.json").is_file():
            self.write_splits()
            self.save_record()
        self.oracle = _make_oracle(self)
        self.search()
        self.finish()
        return self.record

    def search(self) -> None:
        from keras_tuner.engine.trial import TrialStatus

        c = self.config
        while True:
            left = self.time_left()
            if left is not None and left <= 0:
                self.log(f"search stopped: the {c.max_time:g}-minute budget is spent")
                break
            if len(self.oracle.end_order) >= c.trials:  # Hyperband has no trial count of its own
                break
            trial = self.oracle.create_trial(TUNER_ID)
            if trial.status != TrialStatus.RUNNING:
                break
            if int(trial.trial_id) == 0:  # the recipe's own settings come first
                trial.hyperparameters.values = {**trial.hyperparameters.values, **self.defaults}
            values = dict(trial.hyperparameters.values)
            result = self.run_trial(trial.trial_id, values, left)
            if result["status"] == "COMPLETED":
                self.oracle.update_trial(trial.trial_id, {OBJECTIVE: result["score"]})
            trial.status, trial.message = result["status"], result.get("message")
            try:
                self.oracle.end_trial(trial)
            except RuntimeError as e:  # KerasTuner: too many failed trials in a row
                raise ImgclsError(
                    f"{MAX_FAILED_IN_A_ROW} trials in a row failed; the last said: "
                    f"{result.get('message')} ({self.trial_dir(trial.trial_id)}.log)"
                ) from e
            self.progress(trial.trial_id, values, result)
            write_trials_csv(self)

    def trial_dir(self, trial_id: str) -> Path:
        return self.path("trials", f"trial_{trial_id}")

    def run_trial(self, trial_id: str, values: dict, left: float | None) -> dict[str, Any]:
        """Train one trial in a subprocess (or finish it after a kill); its result."""
        run = self.trial_dir(trial_id)
        info_path = run / "trial_info.json"
        if info_path.is_file():  # trained before a kill that came before the oracle heard
            return _read_json(info_path)
        flags = spaces.train_flags(values)
        if "tuner/epochs" in values:  # Hyperband decides the epochs
            flags += ["--epochs", str(values["tuner/epochs"])]
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
        history = run / "history.csv"
        if code == 0 and history.is_file():
            import csv

            with open(history, newline="") as f:
                rows = list(csv.DictReader(f))
            score = float(rows[-1].get(OBJECTIVE) or "nan") if rows else float("nan")
            meta = _read_json(run / "bundle.json")
            result.update(
                status="COMPLETED" if np.isfinite(score) else "FAILED",
                score=score,
                epochs_run=meta["metrics"]["epochs_run"],
                message=None if np.isfinite(score) else "no validation accuracy",
            )
        else:
            result.update(status="FAILED", score=None, message=message)
        write_json(info_path, result)
        return result

    def train(self, run: Path, flags: list[str]) -> tuple[int, float, str]:
        """``imgcls train`` in a subprocess (``--resume`` if ``run`` has checkpoints); returns
        its exit status, peak resident memory in MB and its last error line."""
        c = self.config
        if any((run / "checkpoints").glob("ckpt-*.npz")):
            cmd = ["train", "--resume", str(run)]
        else:
            shutil.rmtree(run, ignore_errors=True)  # killed before its first checkpoint
            cmd = ["train", c.data, "--out", str(run), "--model", self.model, "--seed", str(c.seed)]
            cmd += flags
            cmd += ["--precision", c.precision] if c.precision else []
            cmd += ["--backend", c.backend] if c.backend else []
        run.mkdir(parents=True, exist_ok=True)
        log = run.parent / f"{run.name}.log"
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ imgcls {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "imgcls", *cmd],
                stdout=f,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        errors = [x for x in lines if x.startswith("imgcls: error") or "Error" in x]
        message = (errors or lines or ["no output"])[-1][:300]
        return proc.returncode, round(usage.ru_maxrss / 1024, 1), message

    # ---- the end -------------------------------------------------------------------------------
    def finish(self) -> None:
        """Retrain the best settings (or keep the best trial) into ``best/``, then evaluate the
        test split once."""
        best_trials = self.oracle.get_best_trials(1)
        check(best_trials, "no trial finished; see the trials' logs in " + str(self.path("trials")))
        best = best_trials[0]
        info = _read_json(self.trial_dir(best.trial_id) / "trial_info.json")
        self.record["best"] = {
            "trial": int(best.trial_id) + 1,  # as numbered in trials.csv
            "folder": str(self.trial_dir(best.trial_id).relative_to(self.folder)),
            "val_accuracy": info["score"],
            "values": info["values"],
            "epochs_run": info["epochs_run"],
        }
        self.save_record()
        target = self.path("best")
        if not (target / "bundle.json").is_file() or not self.record.get("final_done"):
            self.make_best(best.trial_id, info, target)
            self.record["final_done"] = True
            self.save_record()
        if "accuracy" not in self.record["test"]:
            self.evaluate_test(target)
        from imgcls.tune.report import write_report

        # The searching process holds no model: its memory stays flat however many trials run.
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.record["search_process_peak_rss_mb"] = round(peak_kb / 1024, 1)
        self.save_record()
        write_trials_csv(self)
        write_report(self)
        self.log(
            f"best: trial {int(best.trial_id) + 1}, validation accuracy {info['score']:.4f}; test accuracy "
            f"{self.record['test']['accuracy']:.4f} (read once); {target}"
        )

    def make_best(self, trial_id: str, info: dict, target: Path) -> None:
        if self.config.final == "keep":  # copied whole, then renamed into place
            tmp = self.path(".best.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.trial_dir(trial_id), tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
            return
        self.log(
            f"retraining trial {int(trial_id) + 1}'s settings on train+validation into {target}"
        )
        values = {k: v for k, v in info["values"].items() if k != "epochs"}
        flags = [*spaces.train_flags(values), "--epochs", str(info["epochs_run"])]
        flags += ["--split-file", str(self.path("final_split.csv").resolve())]
        code, _, message = self.train(target, flags)
        check(code == 0, f"the final training failed: {message} (see {target.parent}/best.log)")

    def evaluate_test(self, run: Path) -> None:
        """The one read of the test split: ``imgcls evaluate best DATA`` with its default split."""
        from imgcls.data.split import write_split_csv

        named = read_split_rows(run / "split.csv")  # what best/ trained and validated on
        test = self.splits == "test"
        ids = np.array(self.images.ids)
        keep = test | np.isin(ids, list(named))
        rows = np.where(test, "test", [named.get(i, "") for i in ids])
        write_split_csv(run / "split.csv", self.images.subset(keep), rows[keep])
        self.record["test"] = {"reads": self.record["test"].get("reads", 0) + 1, "at": _now()}
        self.save_record()
        out = run / "evaluation"
        cmd = [
            sys.executable,
            "-m",
            "imgcls",
            "evaluate",
            str(run),
            self.config.data,
            "--out",
            str(out),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        check(
            done.returncode == 0, f"evaluating the test split failed: {done.stderr.strip()[-300:]}"
        )
        metrics = _read_json(out / "metrics.json")
        n, acc = metrics["n_images"], metrics["accuracy"]
        self.record["test"].update(
            accuracy=acc,
            n_images=n,
            ci95=wilson_interval(acc, n),
            metrics=str(out / "metrics.json"),
        )
        self.save_record()

    # ---- progress ------------------------------------------------------------------------------
    def time_left(self) -> float | None:
        if not self.config.max_time:
            return None
        return self.config.max_time * 60 - (time.perf_counter() - self.t0)

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def progress(self, trial_id: str, values: dict, result: dict) -> None:
        done = [
            t for t in self.oracle.trials.values() if t.status in ("COMPLETED", "FAILED", "INVALID")
        ]
        best = self.oracle.get_best_trials(1)
        elapsed = time.perf_counter() - self.t0
        left = self.config.trials - len(done)
        eta = elapsed / max(len(done), 1) * left
        if self.config.max_time:
            eta = min(eta, max(self.time_left() or 0.0, 0.0))
        settings = " ".join(
            f"{k}={_short(v)}" for k, v in values.items() if not k.startswith("tuner/")
        )
        score = f"{result['score']:.4f}" if result.get("score") is not None else "failed"
        best_text = f"{best[0].score:.4f} (trial {int(best[0].trial_id) + 1})" if best else "-"
        self.log(
            f"trial {int(trial_id) + 1}/{self.config.trials} {settings}: {OBJECTIVE} {score}, "
            f"best {best_text}, {result['seconds']:.0f} s, ETA {_clock(eta)}"
        )


def _make_oracle(search: _Search):
    """The KerasTuner oracle of ``search``: new, or reloaded from ``DIR/oracle``."""
    import keras_tuner as kt

    c = search.config
    hp = kt.HyperParameters()
    for name, param in search.space.items():
        param.add_to(hp, search.defaults[name])
    common = dict(
        objective=kt.Objective(OBJECTIVE, direction="max"),
        hyperparameters=hp,
        seed=c.seed,
        allow_new_entries=False,
        tune_new_entries=False,
        max_consecutive_failed_trials=MAX_FAILED_IN_A_ROW,
    )
    if c.algorithm == "hyperband":
        oracle = kt.oracles.HyperbandOracle(max_epochs=search.max_epochs, factor=3, **common)
    elif c.algorithm == "random":
        oracle = kt.oracles.RandomSearchOracle(max_trials=c.trials, **common)
    else:
        oracle = kt.oracles.BayesianOptimizationOracle(max_trials=c.trials, **common)
    oracle._set_project_dir(str(search.folder), "oracle")
    oracle._display.verbose = 0  # imgcls prints one line per trial instead
    # KerasTuner writes its state with a plain open(): a kill mid-write leaves it unreadable
    # (keras-tuner#835, #987). Write each file whole instead.
    oracle.save = lambda: write_json(oracle._get_oracle_fname(), oracle.get_state())
    oracle._save_trial = lambda trial: write_json(
        os.path.join(oracle._get_trial_dir(trial.trial_id), "trial.json"), trial.get_state()
    )
    if Path(oracle._get_oracle_fname()).is_file():
        oracle.reload()
    return oracle


def write_trials_csv(search: _Search) -> None:
    """``DIR/trials.csv``: one row per finished trial, in the order they started."""
    from imgcls.io import write_csv

    names = list(search.space)
    rows = []
    for trial_id in search.oracle.start_order:
        info_path = search.trial_dir(trial_id) / "trial_info.json"
        if not info_path.is_file():
            continue
        info = _read_json(info_path)
        values = info["values"]
        rows.append([
            int(trial_id) + 1, info["status"].lower(),
            "" if info.get("score") is None else f"{info['score']:.6f}",
            info.get("epochs_run", ""), info["seconds"], info["peak_rss_mb"],
            *[values.get(n, "") for n in names],
        ])  # fmt: skip
    header = ["trial", "status", OBJECTIVE, "epochs_run", "seconds", "peak_rss_mb", *names]
    write_csv(search.path("trials.csv"), header, rows)


def read_split_rows(path: Path) -> dict[str, str]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return {row["id"]: row["split"] for row in csv.DictReader(f)}


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of an accuracy measured on ``n`` images."""
    if n <= 0:
        return [0.0, 1.0]
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(centre - half), 4), round(float(centre + half), 4)]


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGKILL it when the search process dies (also by SIGKILL),
    so a killed search never leaves a trial training on into a folder a resume will reuse."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
