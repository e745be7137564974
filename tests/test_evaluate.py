"""`imgcls evaluate` / `imgcls calibrate`: metrics a user can check, a report that opens offline,
and one-line refusals of bad input that leave no half-written report behind."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from imgcls.cli import main
from tests.conftest import write_folder


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    """(run, data, out folder, metrics) of `imgcls evaluate` on the run's test split."""
    run, data = trained_run
    out = tmp_path_factory.mktemp("eval")
    assert main(["evaluate", str(run), str(data), "--out", str(out)]) == 0
    return run, data, out, json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def evaluated_with_mistakes(trained_run, tmp_path_factory):
    """Out folder of `imgcls evaluate` on other data whose cats and dogs swapped their pictures."""
    base = tmp_path_factory.mktemp("swapped")
    data = write_folder(base / "images", classes=("dogs", "cats", "fish"), per_class=6, seed=5)
    assert main(["evaluate", str(trained_run[0]), str(data), "--out", str(base / "eval")]) == 0
    return base / "eval"


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A copy of the session's run that a test may change (calibrate, damage)."""
    return Path(shutil.copytree(trained_run[0], tmp_path / "run"))


def test_metrics_match_figures_computed_from_predict(evaluated):
    import imgcls

    run, data, _, m = evaluated
    with open(run / "split.csv", newline="") as f:
        test = [row for row in csv.DictReader(f) if row["split"] == "test"]
    names = m["class_names"]
    y = np.array([names.index(row["label"]) for row in test])
    probs = imgcls.load(run).predict_proba([str(data / row["id"]) for row in test])
    pred = probs.argmax(axis=1)
    confusion = np.zeros((len(names), len(names)), int)
    np.add.at(confusion, (y, pred), 1)
    assert m["n_images"] == len(test) and m["split"] == "test"
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["confusion_matrix"] == confusion.tolist()
    assert m["log_loss"] == pytest.approx(
        -np.log(np.clip(probs[np.arange(len(y)), y], 1e-15, 1)).mean(), rel=1e-4
    )
    recalls = np.diag(confusion) / confusion.sum(axis=1)
    assert m["balanced_accuracy"] == pytest.approx(recalls.mean())
    assert m["macro"]["recall"] == pytest.approx(recalls.mean())
    assert m["top_k"] == 2  # 3 classes: k is one less than the number of classes
    top2 = np.argsort(-probs, axis=1)[:, :2]
    assert m["top_k_accuracy"] == pytest.approx((top2 == y[:, None]).any(axis=1).mean())
    bins = m["ece_bins"]
    assert len(bins) == 15 and sum(b["count"] for b in bins) == len(y)
    assert m["ece"] == pytest.approx(
        sum(b["count"] / len(y) * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    )
    assert m["checkpoint"]["sha256"] and m["checkpoint"]["path"].endswith("model.keras")
    assert m["dataset"]["n_images"] == len(test) and m["dataset"]["split"] == "test"
    for key in ("per_class", "left_out", "run", "data"):
        assert key in m
    assert m["seen_in_training"] == {"n": 0, "ids": []}  # the test split is held out


def test_a_copy_of_the_training_images_is_flagged_as_already_seen(trained_run, tmp_path, capsys):
    """Data at another path is evaluated whole; images the run learned from are counted."""
    run, data = trained_run
    copy = Path(shutil.copytree(data, tmp_path / "copy"))
    assert main(["evaluate", str(run), str(copy), "--out", str(tmp_path / "eval")]) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    with open(run / "split.csv", newline="") as f:
        learned = {row["id"] for row in csv.DictReader(f) if row["split"] in ("train", "val")}
    assert m["split"] == "all" and m["n_images"] > len(learned)
    assert m["seen_in_training"]["n"] == len(learned)
    assert set(m["seen_in_training"]["ids"]) <= learned
    assert f"{len(learned)} of {m['n_images']} images are identical" in capsys.readouterr().err

    fresh = write_folder(tmp_path / "fresh", per_class=5, seed=11)
    assert main(["evaluate", str(run), str(fresh), "--out", str(tmp_path / "eval2")]) == 0
    m = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    assert m["seen_in_training"] == {"n": 0, "ids": []}
    assert "not a held-out estimate" not in capsys.readouterr().err


def test_seen_images_are_found_when_the_run_predicts_at_another_size(tmp_path, monkeypatch):
    """A run that trains at 16x16 and predicts at 24x24 (as a pretrained backbone trains at 224
    and predicts at 256): evaluate and suggest still know the images it learned from."""
    import imgcls
    import imgcls.models as models

    models._load_families()
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    fast = models.get_spec("fast")
    models.register_model("fixres", "test only: fast predicting at 1.5x", {"test_scale": 1.5})(
        fast.build
    )
    data = write_folder(tmp_path / "img", per_class=8, seed=3)
    run = tmp_path / "run"
    imgcls.train(str(data), out=run, model="fixres", epochs=1, batch_size=8, image_size=(16, 16),
                 precision="float32", verbose=False, model_args={"widths": (8, 8, 8)})  # fmt: skip
    assert imgcls.load(run).image_size == (24, 24)
    with open(run / "split.csv", newline="") as f:
        learned = {row["id"] for row in csv.DictReader(f) if row["split"] in ("train", "val")}
    copy = Path(shutil.copytree(data, tmp_path / "copy"))
    assert main(["evaluate", str(run), str(copy), "--out", str(tmp_path / "eval")]) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["seen_in_training"]["n"] == len(learned) > 0

    from imgcls.bundle import seen_in_training
    from imgcls.data.cache import cached_pixels

    pool = sorted(str(p) for p in copy.rglob("*.png"))
    pixels = cached_pixels(pool, (24, 24)).pixels  # as `imgcls suggest` decodes its pool
    expected = [i for i, p in enumerate(pool) if str(Path(p).relative_to(copy)) in learned]
    assert seen_in_training(run, pixels, pool).tolist() == expected
    assert seen_in_training(run, pixels).tolist() == []  # without the files: other pixels


def test_known_metrics_on_a_hand_made_example():
    from imgcls.evaluate.metrics import compute_metrics

    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    m = compute_metrics(np.array([0, 1, 1, 2]), probs, ["a", "b", "c"])
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["log_loss"] == pytest.approx(-np.log([0.9, 0.7, 0.3, 0.8]).mean())
    assert m["per_class"]["a"]["precision"] == 0.5 and m["weighted"]["recall"] == 0.75
    # confidences 0.9, 0.7, 0.6, 0.8 land in four different bins; only the 0.6 one is wrong
    assert m["ece"] == pytest.approx((0.1 + 0.3 + 0.6 + 0.2) / 4)


class _PageChecker(HTMLParser):
    VOID = {"meta", "img", "br", "link", "input", "hr", "source"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.ids: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        self.urls += [v for k, v in attrs.items() if k in ("src", "href") and v]
        if "id" in attrs:
            self.ids.append(attrs["id"])

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")


@pytest.mark.parametrize("with_mistakes", [False, True])
def test_report_is_one_valid_offline_page(evaluated, evaluated_with_mistakes, with_mistakes):
    from PIL import Image

    out = evaluated_with_mistakes if with_mistakes else evaluated[2]
    m = json.loads((out / "metrics.json").read_text())
    page = (out / "report.html").read_text(encoding="utf-8")
    checker = _PageChecker()
    checker.feed(page)
    checker.close()
    assert page.startswith("<!DOCTYPE html>")
    assert not checker.errors and not checker.stack
    assert {
        "html",
        "head",
        "body",
        "main",
        "table",
    } <= checker.tags and "script" not in checker.tags
    for section in (
        "summary",
        "data",
        "training",
        "confusion",
        "per-class",
        "calibration",
        "mistakes",
    ):
        assert section in checker.ids
    assert len(checker.images) >= 4  # curves, confusion, per-class bars, reliability diagram
    if with_mistakes:
        assert m["accuracy"] < 0.5 and "grad-cam" in checker.ids
        n_wrong = min(16, round((1 - m["accuracy"]) * m["n_images"]))
        assert len(checker.images) == 4 + n_wrong + 3 * min(
            8, n_wrong
        )  # gallery, then image + 2 Grad-CAMs
    for src in checker.images:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).load()
    assert not [u for u in checker.urls if u.startswith(("http://", "https://", "//"))]
    assert f"{m['accuracy']:.4f}" in page


def test_calibrate_stores_a_temperature_that_predict_and_evaluate_use(
    run_copy, trained_run, tmp_path, capsys
):
    import imgcls
    from imgcls.evaluate.calibrate import apply_temperature

    data = trained_run[1]
    assert main(["calibrate", str(run_copy)]) == 0
    assert "temperature" in capsys.readouterr().out
    bundle = json.loads((run_copy / "bundle.json").read_text())
    t, cal = bundle["temperature"], bundle["metrics"]["calibration"]
    assert t > 0 and t != 1.0 and cal["split"] == "val" and cal["n_images"] > 0
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9
    paths = sorted(str(p) for p in (data / "dogs").glob("*.png"))[:5]
    raw = imgcls.load(trained_run[0]).predict_proba(paths)
    assert np.allclose(imgcls.load(run_copy).predict_proba(paths), apply_temperature(raw, t))

    m = imgcls.evaluate(run_copy, data, out=tmp_path / "eval")
    assert m["temperature"] == t and set(m["uncalibrated"]) == {"log_loss", "ece"}
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "before temperature scaling" in page and "fit set" in page


def test_tta_averages_the_log_probabilities_of_each_view(trained_run, tmp_path, monkeypatch):
    import imgcls
    from imgcls.data.pipeline import decode_images
    from imgcls.data.sources import load_source

    run, data = trained_run
    predictor = imgcls.load(run)
    assert predictor.tta == "none"  # the classic recipe asks for none
    pixels = decode_images(load_source(data).subset(np.arange(6)), predictor.image_size)[0]

    def mean_of(views, weights):
        log_p = sum(
            w * np.log(predictor.predict_pixels(v)) for v, w in zip(views, weights, strict=True)
        )
        p = np.exp(log_p)
        return p / p.sum(axis=1, keepdims=True)

    mirror = pixels[:, :, ::-1]
    assert np.allclose(
        predictor.predict_pixels(pixels, tta=True), mean_of([pixels, mirror], [0.5, 0.5]), atol=1e-5
    )
    padded = np.pad(pixels, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    h, w = pixels.shape[1:3]
    down, up = padded[:, :h, :w], padded[:, 2:, 2:]
    views = [pixels, mirror, down, down[:, :, ::-1], up, up[:, :, ::-1]]
    expected = mean_of(views, [0.25, 0.25, 0.125, 0.125, 0.125, 0.125])
    assert np.allclose(predictor.predict_pixels(pixels, tta="flip_translate"), expected, atol=1e-5)
    assert not np.allclose(expected, predictor.predict_pixels(pixels), atol=1e-4)
    monkeypatch.setattr("imgcls.predict.PREDICT_BATCH", 4)  # large inputs go through in batches
    assert np.allclose(predictor.predict_pixels(pixels, tta="flip_translate"), expected, atol=1e-5)
    m = imgcls.evaluate(run, data, out=tmp_path, tta=True, report=False, predictor=predictor)
    assert m["tta"] == "flip" and not (tmp_path / "report.html").exists()
    with pytest.raises(imgcls.ImgclsError, match="`tta` must be one of"):
        predictor.predict_pixels(pixels, tta="rotate")


def test_long_class_lists_collapse_to_the_most_confused():
    from PIL import Image

    from imgcls.evaluate import plots

    rng = np.random.default_rng(0)
    cm = np.diag(rng.integers(20, 40, 60))
    cm[5, 7] = cm[40, 2] = 30  # the confused pairs must survive the cut
    keep = plots.most_confused(cm)
    assert len(keep) == 20 and {2, 5, 7, 40} <= set(keep.tolist())
    names = [f"class_{i}" for i in range(60)]
    Image.open(io.BytesIO(plots.confusion_heatmap(cm, names))).load()
    per_class = {n: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 3} for n in names * 2}
    Image.open(io.BytesIO(plots.per_class_bars(per_class))).load()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgcls: error:") and "\n" not in err, err
    return err


def _damage_json(run: Path) -> None:
    (run / "bundle.json").write_text("{not json")


def _garbage_model(run: Path) -> None:
    (run / "model.keras").write_bytes(b"PK\x03\x04 this is not a keras file")


def _no_model(run: Path) -> None:
    (run / "model.keras").unlink()


def _empty_test_split(run: Path) -> None:
    with open(run / "split.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(run / "split.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [[*row[:2], "train" if row[2] == "test" else row[2]] for row in rows]
        )


@pytest.mark.parametrize(
    "damage,expected",
    [
        (_damage_json, "bundle.json is damaged"),
        (_garbage_model, "model.keras"),
        (_no_model, "model.keras"),
        (_empty_test_split, "test split"),
    ],
)
def test_bad_run_exits_2_with_one_line_and_no_report(
    run_copy, trained_run, tmp_path, capsys, damage, expected
):
    damage(run_copy)
    out = tmp_path / "eval"
    assert main(["evaluate", str(run_copy), str(trained_run[1]), "--out", str(out)]) == 2
    assert expected in _error_line(capsys)
    assert not out.exists() or not any(out.iterdir())


def test_unknown_labels_are_refused(trained_run, tmp_path, capsys):
    data = write_folder(tmp_path / "other", classes=("cats", "zebras"), per_class=3)
    assert main(["evaluate", str(trained_run[0]), str(data), "--out", str(tmp_path / "eval")]) == 2
    assert "zebras" in _error_line(capsys)
    assert not (tmp_path / "eval").exists()


def test_failure_while_building_the_report_keeps_the_old_one(trained_run, tmp_path, monkeypatch):
    import imgcls
    from imgcls.evaluate import plots

    out = tmp_path / "eval"
    out.mkdir()
    (out / "report.html").write_text("old report")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr(plots, "reliability_diagram", broken)
    with pytest.raises(RuntimeError):
        imgcls.evaluate(trained_run[0], trained_run[1], out=out)
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
    assert (out / "report.html").read_text() == "old report"
