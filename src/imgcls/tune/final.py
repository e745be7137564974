"""The end of a search: ``best/`` (the best settings retrained on train+validation, or the
best trial kept) and the one read of the test split."""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path

import numpy as np

from imgcls.bundle import RunFolder
from imgcls.errors import check
from imgcls.tune import space as spaces
from imgcls.tune.record import BestTrial, TestRead
from imgcls.tune.report import wilson_interval, write_report, write_trials_csv
from imgcls.tune.trials import now, read_json, run_imgcls


def finish(search) -> None:
    """Retrain the best settings (or keep the best trial) into ``best/``, then evaluate the
    test split once."""
    best_trials = search.oracle.get_best_trials(1)
    check(best_trials, "no trial finished; see the trials' logs in " + str(search.path("trials")))
    best = best_trials[0]
    record = search.record
    record.best = info = BestTrial(
        trial=int(best.trial_id) + 1,  # as numbered in trials.csv
        val_accuracy=best.score,
        values=dict(best.hyperparameters.values),
        epochs_run=int(best.metrics.get_last_value("epochs_run")),
    )
    search.save_record()
    target = search.path("best")
    if not RunFolder(target).meta.is_file() or not record.final_done:
        make_best(search, best.trial_id, info, target)
        record.final_done = True
        search.save_record()
    if record.test.accuracy is None:
        evaluate_test(search, target)
    # The searching process holds no model: its memory stays flat however many trials run.
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    record.search_process_peak_rss_mb = round(peak_kb / 1024, 1)
    search.save_record()
    write_trials_csv(search)
    write_report(search)
    search.log(
        f"best: trial {info.trial}, validation accuracy {info.val_accuracy:.4f}; test accuracy "
        f"{record.test.accuracy:.4f} (read once); {target}"
    )


def make_best(search, trial_id: str, info: BestTrial, target: Path) -> None:
    """``best/``: the best trial's settings trained on train+validation for as many epochs as
    the trial ran (``final="retrain"``), or the trial's folder copied (``final="keep"``)."""
    if search.config.final == "keep":  # copied whole, then renamed into place
        tmp = search.path(".best.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(search.trial_dir(trial_id), tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        return
    search.log(f"retraining trial {int(trial_id) + 1}'s settings on train+validation into {target}")
    values = {k: v for k, v in info.values.items() if k != "epochs"}
    flags = [*spaces.train_flags(values), "--epochs", str(info.epochs_run)]
    flags += ["--split-file", str(search.path("final_split.csv").resolve())]
    code, _, message = search.train(target, flags)
    check(code == 0, f"the final training failed: {message} (see {target.parent}/best.log)")


def evaluate_test(search, run: Path) -> None:
    """The one read of the test split: ``imgcls evaluate best DATA`` with its default split."""
    from imgcls.data.split import read_split_csv, write_split_csv

    named = read_split_csv(RunFolder(run).split, search.images)  # what best/ trained on ("" not)
    test = search.splits == "test"
    keep = test | (named != "")
    rows = np.where(test, "test", named)
    write_split_csv(RunFolder(run).split, search.images.subset(keep), rows[keep])
    search.record.test = TestRead(reads=search.record.test.reads + 1, at=now())
    search.save_record()
    out = run / "evaluation"
    code, _, message = run_imgcls(
        [
            "evaluate",
            str(run),
            search.config.data,
            "--out",
            str(out),
            *(["--corrections", search.config.corrections] if search.config.corrections else []),
        ],
        search.path("evaluate.log"),
    )
    check(code == 0, f"evaluating the test split failed: {message} (see evaluate.log)")
    metrics = read_json(out / "metrics.json")
    test = search.record.test
    test.accuracy, test.n_images = metrics["accuracy"], metrics["n_images"]
    test.ci95 = wilson_interval(test.accuracy, test.n_images)
    test.metrics = str(out / "metrics.json")
    search.save_record()
