"""A corrections file beside the data (`DATA/.imgcls/corrections.csv`): relabels and exclusions
taken by prepare, train and evaluate, recorded in run.json; stale rows ignored with a warning;
bad rows one line naming the row, exit 2, nothing written; the images never touched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import imgcls
from imgcls.cli import main
from imgcls.data.corrections import append_decision, default_file, read_corrections
from imgcls.data.hashing import sha256_file
from tests.conftest import write_folder

TINY = dict(model="classic", batch_size=8, image_size=(16, 16), epochs=1, verbose=False,
            model_args={"filters": (8, 16), "dense_units": 16})  # fmt: skip


@pytest.fixture
def data(tmp_path) -> Path:
    return write_folder(tmp_path / "data", per_class=12)


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.png"))}  # fmt: skip


def decide(data: Path, path: str, action: str, label: str = "") -> None:
    append_decision(default_file(data), path, sha256_file(data / path), action, label, "test")


def test_train_and_evaluate_apply_relabels_and_exclusions(data, tmp_path):
    before = digests(data)
    decide(data, "cats/000.png", "relabel", "dogs")
    decide(data, "cats/001.png", "exclude")
    decide(data, "fish/000.png", "exclude")
    decide(data, "fish/000.png", "undo")  # taken back: fish/000 stays
    decide(data, "dogs/003.png", "relabel", "fish")
    decide(data, "dogs/003.png", "keep")  # the last decision wins: as it is
    run = imgcls.train(str(data), out=tmp_path / "run", **TINY).run_dir
    record = json.loads((run / "run.json").read_text())["data"]
    assert record["n_images"] == 35  # 36 less the one excluded
    c = record["corrections"]
    assert (c["applied"], c["relabelled"], c["excluded"], c["ignored"]) == (2, 1, 1, 0)
    assert c["file"] == str(default_file(data).resolve()) and len(c["digest"]) == 64
    split = (run / "split.csv").read_text()
    assert "cats/001.png" not in split
    line = next(row for row in split.splitlines() if row.startswith("cats/000.png"))
    assert line.split(",")[1] == "dogs"
    assert main(["evaluate", str(run), str(data), "--split", "all", "--out",
                 str(tmp_path / "eval")]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] == 35
    assert digests(data) == before  # no image moved, renamed, changed or deleted


def test_prepare_applies_the_corrections(data, tmp_path):
    decide(data, "cats/000.png", "relabel", "fish")
    decide(data, "dogs/000.png", "exclude")
    assert main(["prepare", str(data), "--out", str(tmp_path / "prep"), "--quiet"]) == 0
    manifest = (tmp_path / "prep" / "manifest.csv").read_text()
    assert "dogs/000.png" not in manifest
    row = next(r for r in manifest.splitlines() if "cats/000.png" in r)
    assert "fish" in row.split(",")
    assert "corrections.csv" not in (tmp_path / "prep" / "report.json").read_text()


def test_a_changed_image_keeps_its_label_with_a_warning(data, tmp_path, capsys):
    decide(data, "cats/000.png", "relabel", "dogs")
    (data / "cats" / "000.png").write_bytes((data / "cats" / "005.png").read_bytes())
    run = imgcls.train(str(data), out=tmp_path / "run", **TINY).run_dir
    err = capsys.readouterr().err
    assert "000.png changed after it was reviewed" in err and "row 2" in err
    c = json.loads((run / "run.json").read_text())["data"]["corrections"]
    assert (c["applied"], c["ignored"]) == (0, 1)


@pytest.mark.parametrize(
    "rows, message",
    [
        (["cats/000.png,{d},relabel,horses,,"], "row 2: `label` must be one of the classes"),
        (["cats/999.png,{d},exclude,,,"], "row 2: `path` cats/999.png is not an image"),
        (["cats/000.png,{d},exclude,,,", "cats/001.png"], "row 3: expected the columns"),
        (["cats/000.png,{d},delete,,,"], "row 2: `action` must be one of"),
        (["cats/000.png,abc,exclude,,,"], "row 2: `digest` must be the sha256"),
    ],
)
def test_a_bad_corrections_file_is_one_line_and_nothing_is_written(
    data, tmp_path, capsys, rows, message
):
    d = sha256_file(data / "cats" / "000.png")
    file = default_file(data)
    file.parent.mkdir()
    file.write_text("path,digest,action,label,reason,time\n" + "\n".join(rows).format(d=d) + "\n")
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", "--quiet"]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("imgcls: error:")]
    assert len(lines) == 1 and message in lines[0] and str(file) in lines[0], lines
    assert not out.exists()


def test_replay_keeps_the_last_decision_per_path(tmp_path):
    file = tmp_path / "c.csv"
    d = "0" * 64
    for path, action, label in [("a.png", "relabel", "x"), ("a.png", "relabel", "y"),
                                ("b.png", "exclude", ""), ("a.png", "undo", ""),
                                ("b.png", "undo", ""), ("b.png", "undo", "")]:  # fmt: skip
        append_decision(file, path, d, action, label)
    decisions = read_corrections(file, ["x", "y"])
    assert [(c.path, c.action, c.label) for c in decisions] == [("a.png", "relabel", "x")]
