"""The `imgcls` command end to end on a generated folder, and its answers to bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from imgcls.cli import main
from tests.conftest import write_folder

IMGCLS = [sys.executable, "-m", "imgcls"]
SMALL = [
    "--model",
    "classic",
    "--epochs",
    "6",
    "--batch-size",
    "16",
    "--image-size",
    "16",
    "16",
    "--model-arg",
    "filters=[16,32]",
    "--model-arg",
    "dense_units=32",
]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([*IMGCLS, *args], capture_output=True, text=True, env=env, timeout=300)


def test_train_evaluate_predict_end_to_end(tmp_path):
    data = write_folder(tmp_path / "images", per_class=40)
    (data / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    run = tmp_path / "run"
    r = run_cli("train", str(data), "--out", str(run), *SMALL, "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout
    assert "broken.jpg" in r.stderr  # a bad file is named and left out, training goes on
    # Where the time went and the peak memory: printed, and kept in run.json.
    record = json.loads((run / "run.json").read_text())
    stages = ["start-up", "data", "model", "first epoch", "other epochs", "bundle", "test"]
    assert [s for s in record["timeline"] if s in stages] == stages
    assert all(seconds >= 0 for seconds in record["timeline"].values())
    assert record["timeline"]["start-up"] > 0.5  # the interpreter and its imports count
    assert f"time: start-up {record['timeline']['start-up']:.1f} s" in r.stdout
    assert record["peak_rss_mb"] > 100 and "peak memory" in r.stdout
    for name in ("model.keras", "bundle.json", "split.csv", "history.csv", "run.json"):
        assert (run / name).is_file(), name
    # The bundle is the inference model alone: plain Keras loads it, with no optimizer state.
    load = (
        "import sys, keras; m = keras.saving.load_model(sys.argv[1]); "
        "print(getattr(m, 'optimizer', None) is None)"
    )
    r = subprocess.run(
        [sys.executable, "-c", load, str(run / "model.keras")], capture_output=True, text=True
    )
    assert r.stdout.strip() == "True", r.stderr[-2000:]
    meta = json.loads((run / "bundle.json").read_text())
    assert meta["class_names"] == ["cats", "dogs", "fish"]
    assert meta["image_size"] == [16, 16] and meta["config"]["seed"] == 3
    versions = set(meta["versions"])
    assert {"python", "imgcls", "keras", "numpy", "pillow"} <= versions
    assert {"tensorflow", "tensorflow-cpu"} & versions  # whichever build is installed
    # every installed backend is recorded, not only the one that trained
    assert {b for b in ("jax", "torch") if importlib.util.find_spec(b)} <= versions
    with open(run / "split.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 121 and {r["split"] for r in rows} == {"train", "val", "test"}
    with open(run / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 6

    r = run_cli("evaluate", str(run), str(data), "--out", str(tmp_path / "eval"))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    n_test = sum(1 for row in rows if row["split"] == "test" and "broken" not in row["id"])
    assert metrics["n_images"] == n_test  # the run's own test split, not every image
    assert metrics["accuracy"] >= 0.9  # the synthetic classes are easy
    assert np.array(metrics["confusion_matrix"]).sum() == n_test
    assert set(metrics["per_class"]["cats"]) >= {"precision", "recall", "f1", "support"}

    r = run_cli(
        "predict",
        str(run),
        str(data / "dogs"),
        str(data / "cats" / "broken.jpg"),
        "--format",
        "json",
        "--top-k",
        "2",
    )
    assert r.returncode == 1  # one file failed, the rest were predicted
    results = json.loads(r.stdout)
    assert len(results) == 41
    assert "broken.jpg" in r.stderr and "Traceback" not in r.stderr
    good = [x for x in results if "error" not in x]
    assert sum(x["label"] == "dogs" for x in good) >= 36
    assert len(good[0]["top_k"]) == 2


def test_other_data_with_same_classes_counts_every_image(trained_run, tmp_path):
    run, _ = trained_run
    other = write_folder(tmp_path / "other", classes=("cats", "dogs"), per_class=5, seed=9)
    assert main(["evaluate", str(run), str(other), "--out", str(tmp_path / "e")]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["n_images"] == 10


def test_predict_formats_and_globs(trained_run, capsys):
    run, data = trained_run
    assert main(["predict", str(run), str(data / "fish" / "00*.png"), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("path,label,probability") and len(lines) == 11
    assert main(["predict", str(run), str(data / "fish" / "000.png")]) == 0
    assert "fish" in capsys.readouterr().out


def test_python_api_matches_cli_prediction(trained_run):
    import imgcls

    run, data = trained_run
    predictor = imgcls.load(run)
    path = data / "dogs" / "001.png"
    by_path = predictor.predict([path], top_k=3)[0]
    by_pixels = predictor.predict_proba([np.asarray(__import__("PIL.Image").Image.open(path))])[0]
    assert by_path.label == predictor.classes_[int(np.argmax(by_pixels))]
    assert by_path.probability == pytest.approx(float(by_pixels.max()), abs=1e-6)


def test_train_on_every_image_without_splits(tmp_path):
    data = write_folder(tmp_path / "images", per_class=8)
    assert (
        main(
            [
                "train",
                str(data),
                "--out",
                str(tmp_path / "r"),
                "--val-split",
                "0",
                "--test-split",
                "0",
                "--epochs",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    with open(tmp_path / "r" / "split.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["split"] for r in rows} == {"train"}
    config = json.loads((tmp_path / "r" / "bundle.json").read_text())["config"]
    assert config["model"] == "fast"  # the default for small images
    assert config["image_size"] == [24, 24]  # the data's own size
    assert config["batch_size"] == 16  # the recipe's 512 shrinks on a tiny data set


BAD_TRAIN = [
    (["train", "{tmp}/nope", "--out", "{tmp}/r"], "DATA not found: {tmp}/nope"),
    (["train", "{empty}", "--out", "{tmp}/r"], "no images found"),
    (["train", "{one}", "--out", "{tmp}/r"], "at least 2"),
    (
        ["train", "{data}", "--out", "{tmp}/r", "--epochs", "0"],
        "`epochs` must be a positive integer. Received: epochs=0",
    ),
    (
        ["train", "{data}", "--out", "{tmp}/r", "--image-size", "0", "5"],
        "`image_size` must be two integers",
    ),
    (
        ["train", "{data}", "--out", "{tmp}/r", "--val-split", "0.6", "--test-split", "0.5"],
        "sum below 1",
    ),
    (["train", "{data}", "--out", "{tmp}/r", "--model", "nonsense"], "`model` must be one of"),
    (["train", "{csv}", "--out", "{tmp}/r"], "columns path,label"),
    (["evaluate", "{tmp}/nope", "{data}", "--out", "{tmp}/e"], "RUN not found"),
]


@pytest.mark.parametrize("argv, message", BAD_TRAIN)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    data = write_folder(tmp_path / "data", per_class=3)
    (tmp_path / "empty").mkdir()
    one = write_folder(tmp_path / "one", classes=("a",), per_class=3)
    (tmp_path / "bad.csv").write_text("file,class\n")
    fill = {
        "tmp": str(tmp_path),
        "empty": str(tmp_path / "empty"),
        "one": str(one),
        "data": str(data),
        "csv": str(tmp_path / "bad.csv"),
    }
    code = main([a.format(**fill) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message.format(**fill) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_label_in_evaluation_data(trained_run, tmp_path, capsys):
    run, _ = trained_run
    other = write_folder(tmp_path / "other", classes=("cats", "zebras"), per_class=2)
    assert main(["evaluate", str(run), str(other), "--out", str(tmp_path / "e")]) == 2
    assert "label(s) the model does not know: ['zebras']" in capsys.readouterr().err
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_existing_run_is_not_overwritten(trained_run, tmp_path, capsys):
    run, data = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    before = (copy / "model.keras").read_bytes()
    assert main(["train", str(data), "--out", str(copy), "--epochs", "1"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (copy / "model.keras").read_bytes() == before


def test_damaged_model_file_is_refused(trained_run, tmp_path, capsys):
    run, data = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "model.keras").write_bytes(b"garbage")
    assert main(["predict", str(copy), str(data / "cats" / "000.png")]) == 2
    assert "cannot load" in capsys.readouterr().err


def test_models_lists_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "classic" in out and "815,466" in out
    fast = next(line for line in out.splitlines() if line.startswith("fast "))
    assert "ReLU" in fast and "GELU" not in fast  # what the network computes (relu by default)


def test_help_is_fast_and_clean():
    r = subprocess.run([*IMGCLS, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "train" in r.stdout and "predict" in r.stdout and not r.stderr
    probe = "import sys, imgcls, imgcls.cli; imgcls.cli.build_parser(); print('tensorflow' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False"  # parsing and --help never pay for importing TensorFlow


def test_predict_and_evaluate_give_the_same_probabilities(trained_run, tmp_path, capsys):
    run, data = trained_run
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "e")]) == 0
    with open(tmp_path / "e" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert (
        rows and len(rows) == json.loads((tmp_path / "e" / "metrics.json").read_text())["n_images"]
    )
    capsys.readouterr()
    paths = [str(data / r["id"]) for r in rows]
    assert main(["predict", str(run), *paths, "--format", "json", "--top-k", "3"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    for row, pred in zip(rows, predicted, strict=True):
        assert pred["label"] == row["predicted"]
        for item in pred["top_k"]:
            assert item["probability"] == pytest.approx(
                float(row["p_" + item["label"]]), rel=1e-5, abs=1e-6
            )
