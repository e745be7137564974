"""imgcls tune: a real search on digits (trials are `imgcls train` subprocesses), a SIGKILL in
the middle of a trial and --resume, the test split read once, and bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgcls.cli import main

pytest.importorskip("keras_tuner")

# Short trials: classic on 8x8 digits for 2-3 epochs (a few seconds each after start-up).
SPACE = {
    "lr": {"min": 5e-4, "max": 5e-3, "log": True},
    "dropout": {"min": 0.0, "max": 0.3},
    "epochs": {"min": 2, "max": 3},
    "replace": True,
}
SEARCH = ["--model", "classic", "--trials", "3", "--algorithm", "random", "--seed", "3"]


def _tune_cmd(out: Path, space: Path) -> list[str]:
    return [sys.executable, "-m", "imgcls", "tune", "digits", "--out", str(out), "--space",
            str(space), *SEARCH]  # fmt: skip


def _trials(out: Path) -> list[dict]:
    with open(out / "trials.csv", newline="") as f:
        keep = ("trial", "status", "val_accuracy", "epochs_run", "lr", "dropout", "epochs")
        return [{k: row[k] for k in keep} for row in csv.DictReader(f)]


def _ids(path: Path, split: str | None = None) -> set[str]:
    with open(path, newline="") as f:
        return {r["id"] for r in csv.DictReader(f) if split is None or r["split"] == split}


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.json"
    path.write_text(json.dumps(SPACE))
    return path


@pytest.fixture(scope="module")
def search(tmp_path_factory, space_file) -> Path:
    """An uninterrupted 3-trial search."""
    out = tmp_path_factory.mktemp("tune") / "search"
    done = subprocess.run(_tune_cmd(out, space_file), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.slow  # ~65 s: every trial is an `imgcls train` process
def test_a_search_ends_with_a_best_run_that_evaluate_takes(search, tmp_path):
    record = json.loads((search / "tune.json").read_text())
    trials = _trials(search)
    assert [t["trial"] for t in trials] == ["1", "2", "3"]
    assert all(t["status"] == "completed" for t in trials)
    assert len({(t["lr"], t["dropout"], t["epochs"]) for t in trials}) == 3  # 3 settings tried
    # The first trial is the recipe's own settings (moved into the narrowed ranges).
    assert float(trials[0]["lr"]) == pytest.approx(record["defaults"]["lr"])
    assert float(trials[0]["dropout"]) == pytest.approx(0.1)  # classic's default
    best = max(trials, key=lambda t: float(t["val_accuracy"]))
    assert record["best"]["val_accuracy"] == pytest.approx(float(best["val_accuracy"]))
    assert (search / "report.html").read_text().count("data:image/png;base64,") >= 2

    # The test split was read once, after the search, and by nothing else.
    test_ids = _ids(search / "split.csv", "test")
    assert test_ids and record["test"]["reads"] == 1
    for trial in (search / "trials").iterdir():
        if trial.is_dir():
            assert not _ids(trial / "split.csv") & test_ids, trial
    assert _ids(search / "best" / "split.csv", "test") == test_ids

    # best/ is an ordinary run: evaluate takes it with its defaults and agrees with tune.json.
    assert main(["evaluate", str(search / "best"), "digits", "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(record["test"]["accuracy"])
    assert metrics["n_images"] == len(test_ids)
    lo, hi = record["test"]["ci95"]
    assert lo < record["test"]["accuracy"] < hi


@pytest.mark.slow  # make test-slow: ~70 s of subprocesses (room in make test for photos' tests)
def test_hyperband_continues_the_trials_it_promotes(space_file, tmp_path):
    """Hyperband (max 3 epochs, factor 3): three 1-epoch trials, then the best of them goes on
    from its own model for the 2 epochs left instead of training 3 from scratch."""
    out = tmp_path / "hb"
    cmd = [sys.executable, "-m", "imgcls", "tune", "digits", "--out", str(out), "--space",
           str(space_file), "--model", "classic", "--algorithm", "hyperband", "--trials", "4",
           "--final", "keep", "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out / "trials.csv", newline="") as f:
        trials = list(csv.DictReader(f))
    assert [t["epochs_run"] for t in trials] == ["1", "1", "1", "3"]
    folders = sorted(p for p in (out / "trials").iterdir() if p.is_dir())  # in trial order
    config = json.loads((folders[3] / "run.json").read_text())["config"]
    assert config["epochs"] == 2  # the 2 epochs left
    parent = Path(config["init_from"])
    parent_trial = [f.resolve() for f in folders].index(parent) + 1
    assert [t["continues"] for t in trials] == ["", "", "", str(parent_trial)]
    scores = {
        f.resolve(): float(t["val_accuracy"]) for f, t in zip(folders[:3], trials[:3], strict=True)
    }
    assert scores[parent] == max(scores.values())  # the best 1-epoch trial went on


@pytest.mark.slow  # make test-slow: ~2 min of subprocesses
def test_a_search_killed_mid_trial_resumes_to_the_same_result(search, space_file, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_tune_cmd(out, space_file), stderr=subprocess.DEVNULL)
    checkpoints = out / "trials" / "trial_1" / "checkpoints"
    deadline = time.monotonic() + 240
    while not (checkpoints.is_dir() and any(checkpoints.glob("ckpt-*.npz"))):
        assert proc.poll() is None, "the search ended before its second trial checkpointed"
        assert time.monotonic() < deadline, "no checkpoint of the second trial in 4 minutes"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the trial's process dies with it (PR_SET_PDEATHSIG)
    proc.wait()
    assert not (out / "trials" / "trial_1" / "bundle.json").exists()

    done = subprocess.run(
        [sys.executable, "-m", "imgcls", "tune", "--resume", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in (out / "trials" / "trial_1.log").read_text()
    assert _trials(out) == _trials(search)
    a, b = (json.loads((d / "tune.json").read_text()) for d in (out, search))
    assert a["best"] == b["best"]
    assert a["test"]["accuracy"] == b["test"]["accuracy"] and a["test"]["reads"] == 1


@pytest.mark.parametrize(
    "space, flags, expected",
    [
        ({}, [], "must name at least one parameter"),
        ({"lr": {"min": 0.1, "max": 0.01}}, [], "`min` must be below `max`"),
        ({"momentum": {"min": 0.8, "max": 0.99}}, [], "unknown parameter `momentum`"),
        ({"label_smoothing": {"min": 0.0, "max": 1.5}}, [], "`label_smoothing` must lie in"),
        ({"batch_size": {"values": []}}, [], "`values` must be a non-empty list"),
        ({"lr": {"min": 1e-3, "max": 1e-2}}, ["--trials", "0"], "`trials` must be a positive"),
    ],
)
def test_bad_search_settings_are_one_line_and_write_nothing(
    tmp_path, capsys, space, flags, expected
):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    out = tmp_path / "out"
    code = main(["tune", "digits", "--out", str(out), "--space", str(path), "--model", "classic",
                 *flags])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


def test_resume_on_a_folder_that_is_not_a_search_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["tune", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a tuning run" in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path / "run") == []


@pytest.mark.slow  # needs the finished search above
def test_resuming_a_worker_or_a_search_as_the_other_is_one_line(search, tmp_path, capsys):
    record = json.loads((search / "tune.json").read_text())
    assert main(["tune", "--resume", str(search), "--worker", "127.0.0.1:1"]) == 2
    assert "drop --worker" in capsys.readouterr().err
    worker = tmp_path / "w"
    worker.mkdir()
    record["worker"] = {"chief": "10.0.0.1:7000", "id": "w1"}
    (worker / "tune.json").write_text(json.dumps(record))
    assert main(["tune", "--resume", str(worker)]) == 2
    err = capsys.readouterr().err.strip()
    assert "continue it with --worker 10.0.0.1:7000" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("id,label,split\ndigits/0000,0,holdout\n", "`split` must be train, val or test"),
        ("name,split\ndigits/0000,train\n", "must have `id` and `split` columns"),
        ("id,label,split\nnot-an-id,0,train\n", "none of the images in DATA appear"),
    ],
)
def test_a_bad_split_file_is_one_line(tmp_path, capsys, text, expected):
    path = tmp_path / "split.csv"
    path.write_text(text)
    code = main(["train", "digits", "--out", str(tmp_path / "run"), "--split-file", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1, err


def test_trials_caps_hyperband_whoever_asks_for_trials(tmp_path):
    """--trials caps a Hyperband oracle itself, so a chief stops its workers there too."""
    from types import SimpleNamespace

    from keras_tuner.engine.trial import TrialStatus

    from imgcls.tune import space as spaces
    from imgcls.tune.settings import TuneSettings
    from imgcls.tune.trials import make_oracle

    space = spaces.parse_space({"lr": {"min": 1e-3, "max": 1e-2, "log": True}}, "space")
    search = SimpleNamespace(
        config=TuneSettings(data="digits", algorithm="hyperband", trials=2),
        space=space, defaults={"lr": 2e-3}, folder=tmp_path, max_epochs=27,
    )  # fmt: skip
    oracle = make_oracle(search)
    for _ in range(2):
        trial = oracle.create_trial("w1")
        assert trial.status == TrialStatus.RUNNING
        oracle.update_trial(trial.trial_id, {"val_accuracy": 0.5})
        trial.status = TrialStatus.COMPLETED
        oracle.end_trial(trial)
    assert oracle.create_trial("w2").status == TrialStatus.STOPPED
