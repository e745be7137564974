"""A corrections file beside the data (`DATA/.imgcls/corrections.csv`, or any given with
`--corrections`): relabels, exclusions and images added from outside DATA, taken by prepare,
train, evaluate and tune, recorded in run.json; stale rows ignored with a warning; bad rows one
line naming the row, exit 2, nothing written; the images never touched."""

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
    outside = write_folder(tmp_path / "more", per_class=1, seed=1) / "fish" / "000.png"
    append_decision(default_file(data), str(outside), sha256_file(outside), "add", "fish")
    run = imgcls.train(str(data), out=tmp_path / "run", **TINY).run_dir
    record = json.loads((run / "run.json").read_text())["data"]
    assert record["n_images"] == 36  # 36 less the one excluded, plus the one added
    c = record["corrections"]
    assert (c["applied"], c["relabelled"], c["excluded"], c["added"]) == (3, 1, 1, 1)
    assert c["ignored"] == 0
    assert f"{outside},fish," in (run / "split.csv").read_text()  # trained on with its label
    assert c["file"] == str(default_file(data).resolve()) and len(c["digest"]) == 64
    split = (run / "split.csv").read_text()
    assert "cats/001.png" not in split
    line = next(row for row in split.splitlines() if row.startswith("cats/000.png"))
    assert line.split(",")[1] == "dogs"
    assert main(["evaluate", str(run), str(data), "--split", "all", "--out",
                 str(tmp_path / "eval")]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] == 36
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


def test_decisions_made_after_prepare_apply_to_the_prepared_folder(data, tmp_path):
    """Reviewed after it was prepared: the folder's rows (relative to it) find its images in
    the prepared manifest, which names them by absolute path."""
    from imgcls.data.sources import load_source

    prep = tmp_path / "prep"
    assert main(["prepare", str(data), "--out", str(prep), "--quiet"]) == 0
    decide(data, "cats/000.png", "relabel", "fish")
    decide(data, "dogs/000.png", "exclude")
    images = load_source(str(prep), corrections=str(default_file(data)))
    assert str(data / "dogs" / "000.png") not in images.paths and len(images) == 35
    where = images.paths.index(str(data / "cats" / "000.png"))
    assert images.class_names[images.labels[where]] == "fish"
    assert (images.corrections["relabelled"], images.corrections["excluded"]) == (1, 1)


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


def test_a_corrections_file_that_is_not_utf8_is_one_line(data, tmp_path, capsys):
    file = default_file(data)
    file.parent.mkdir()
    file.write_bytes(b"path,digest,action,label,reason,time\ncats/000.png,x,exclude,,caf\xe9,\n")
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", "--quiet"]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("imgcls: error:")]
    assert len(lines) == 1 and "must be UTF-8" in lines[0] and str(file) in lines[0], lines
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


def write_corrections(file: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """A corrections file as review writes it: (path, digest, action, label) rows."""
    for path, digest, action, label in rows:
        append_decision(file, path, digest, action, label, "test")
    return file


def test_a_given_file_applies_to_a_manifest_and_adds_images_from_outside(data, tmp_path, capsys):
    """`--corrections FILE` on a CSV manifest (no default file there): a relabel, two images
    added from another folder (one absolute, one relative to DATA's folder), a stale addition
    ignored with a warning; prepare and tune read the same images."""
    from imgcls.tune.search import _Search
    from imgcls.tune.settings import TuneSettings

    manifest = tmp_path / "data.csv"
    files = sorted(data.rglob("*.png"))
    manifest.write_text("path,label\n" + "".join(f"data/{p.relative_to(data)},{p.parent.name}\n"
                                                 for p in files))  # fmt: skip
    more = write_folder(tmp_path / "more", per_class=2, seed=1)
    a, b, stale = more / "cats" / "000.png", more / "dogs" / "001.png", more / "fish" / "000.png"
    file = write_corrections(tmp_path / "decisions.csv", [
        ("data/cats/003.png", sha256_file(data / "cats" / "003.png"), "relabel", "fish"),
        (str(a), sha256_file(a), "add", "cats"),
        ("more/dogs/001.png", sha256_file(b), "add", "fish"),  # relative to the manifest's folder
        (str(stale), "0" * 64, "add", "fish"),
    ])  # fmt: skip
    out = tmp_path / "prep"
    assert main(["prepare", str(manifest), "--corrections", str(file), "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    assert f"{stale} changed after it was reviewed" in capsys.readouterr().err
    lines = (out / "manifest.csv").read_text().splitlines()[1:]
    labels = {row.split(",")[0]: row.split(",")[1] for row in lines}
    assert len(labels) == 36 + 2  # DATA and the two added
    assert labels[str(data / "cats" / "003.png")] == "fish"
    assert labels[str(a)] == "cats" and labels[str(b)] == "fish"
    search = _Search(tmp_path / "tune", TuneSettings(data=str(manifest), corrections=str(file)),
                     None, verbose=False)  # fmt: skip
    c = search.images.corrections
    assert (len(search.images), c["added"], c["relabelled"], c["ignored"]) == (38, 2, 1, 1)
    assert search.images.labels[search.images.ids.index(str(a))] == 0  # cats


@pytest.mark.parametrize(
    "action_path, message",
    [("{missing}", "row 2: the added image"), ("cats/000.png", "is already an image of this")],
)
def test_a_bad_addition_is_one_line(data, tmp_path, capsys, action_path, message):
    file = write_corrections(tmp_path / "c.csv", [(
        action_path.format(missing=tmp_path / "nowhere.png"), "0" * 64, "add", "cats")])  # fmt: skip
    out = tmp_path / "run"
    assert main(["train", str(data), "--corrections", str(file), "--out", str(out)]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("imgcls: error:")]
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()
