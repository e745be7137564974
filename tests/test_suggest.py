"""`imgcls suggest`: uncertain images first, spread over clusters, never a training image or a
near copy of one; the ranked CSV; bad input one line and nothing written."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.cli import main
from imgcls.suggest import rank_suggestions


def test_uncertain_images_come_first_and_picks_spread_over_clusters():
    rng = np.random.default_rng(0)
    centers = np.eye(4) * 10  # four tight clusters of 50 images
    features = np.concatenate([c + rng.normal(0, 0.1, (50, 4)) for c in centers])
    probs = np.tile([[0.95, 0.05]], (200, 1))  # confident about everything ...
    probs[:150] = [0.55, 0.45]  # ... except clusters 0-2
    picked = rank_suggestions(probs, features, n=3)
    assert sorted(picked // 50) == [0, 1, 2]  # one per uncertain cluster, not 3 near copies
    probs[7] = [0.5, 0.5]  # the single most uncertain image leads
    assert rank_suggestions(probs, features, n=3)[0] == 7
    exclude = np.zeros(200, dtype=bool)
    exclude[:50] = True  # cluster 0 is left out entirely
    assert not set(rank_suggestions(probs, features, n=3, exclude=exclude) // 50) & {0}
    assert len(rank_suggestions(probs, features, n=500)) == 200  # all there is


def training_image(run: Path, data: Path) -> Path:
    with open(run / "split.csv", newline="") as f:
        first = next(r for r in csv.DictReader(f) if r["split"] == "train")
    return data / first["id"]


def test_suggest_never_picks_a_training_image_or_a_near_copy(trained_run, tmp_path, capsys):
    run, data = trained_run
    pool = tmp_path / "pool"
    pool.mkdir()
    seen = training_image(run, data)
    (pool / "copy.png").write_bytes(seen.read_bytes())
    brighter = np.clip(np.asarray(Image.open(seen), np.int16) + 4, 0, 255).astype(np.uint8)
    Image.fromarray(brighter).save(pool / "brighter.jpg", quality=95)
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(pool / f"{i}.png")
    (pool / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "suggest.csv"
    assert main(["suggest", str(run), str(pool), "--n", "20", "--out", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    names = [Path(r["path"]).name for r in rows]
    assert sorted(names) == sorted(f"{i}.png" for i in range(8))  # neither copy, nor broken
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, 9)]
    margins = [float(r["margin"]) for r in rows]
    assert margins[0] == min(margins)  # the most uncertain first
    assert all(r["guess"] in ("cats", "dogs", "fish") for r in rows)
    assert "left out" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [(["--n", "0"], "`n` must be a positive integer"), (["--n", "2", "--pool-is-empty"], "")],
)
def test_bad_input_is_one_line_and_nothing_is_written(trained_run, tmp_path, capsys, args, message):
    run, _ = trained_run
    out = tmp_path / "s.csv"
    pool = tmp_path / "empty"
    pool.mkdir()
    if "--pool-is-empty" in args:
        args, message = ["--n", "2"], "no image files found"
    else:
        Image.new("RGB", (20, 20)).save(pool / "a.png")
    assert main(["suggest", str(run), str(pool), *args, "--out", str(out)]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("imgcls: error:")]
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()
