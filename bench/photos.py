"""The default `imgcls train` on a folder of photos: pretrained vs from scratch, per class pair.

For each pair of CIFAR-10 classes, :mod:`photo_set` writes a photo-like folder (``--per-class``
images per class upscaled to 300-640 pixels, varied aspect ratios, ``train/`` + ``val/`` and no
``test/``) and a separate held-out folder of other images of the same classes, built the same
way. Then, through the real CLI and with nothing but defaults:

- ``imgcls train DATA --out RUN`` (pretrained backbone, head on cached features), timed whole;
- ``imgcls evaluate RUN HELD_OUT --out EV``: accuracy on images no run saw or was tuned on;
- ``imgcls train DATA --out RUN --weights none`` (what users without pretrained weights get:
  ``classic`` from scratch at 112x112), evaluated the same way;
- ``imgcls predict RUN HELD_OUT`` timed, for prediction images/s (process start included).

    python bench/photos.py --pairs cat,dog automobile,truck airplane,bird deer,horse
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

from _common import CIFAR, IMGCLS, ROOT, timed, write_result
from photo_set import build

HELD_OUT_PER_CLASS = 250  # images per class of the held-out folder: +-2.9 points at 90%


def run_pair(pair: list[str], per_class: int, out: Path, extra: list[str]) -> list[dict]:
    """Build the sets for ``pair``, train both ways, evaluate, predict; one row per way."""
    name = "-".join(pair)
    data, held = out / f"{name}-data", out / f"{name}-held"
    used = build(pair, per_class, data, seed=0, sides=(300, 640))
    build(pair, HELD_OUT_PER_CLASS, held, seed=1, sides=(300, 640), exclude=used, flat=True)
    rows = []
    for way, flags in (("pretrained", []), ("from scratch", ["--weights", "none"])):
        run = out / f"{name}-{way.replace(' ', '')}"
        shutil.rmtree(run, ignore_errors=True)
        wall, log = timed([*IMGCLS, "train", str(data), "--out", str(run), *flags, *extra])
        meta = json.loads((run / "bundle.json").read_text())
        ev = run / "eval"
        timed([*IMGCLS, "evaluate", str(run), str(held), "--out", str(ev)])
        metrics = json.loads((ev / "metrics.json").read_text())
        predict_s, _ = timed([*IMGCLS, "predict", str(run), str(held), "--format", "csv"])
        features = meta["metrics"].get("feature_pass") or {}
        rows.append(
            {
                "pair": name,
                "way": way,
                "model": meta["config"]["model"],
                "image_size": meta["image_size"],
                "held_out_accuracy": metrics["accuracy"],
                "n_held_out": metrics["n_images"],
                "own_test_accuracy": meta["metrics"]["test_accuracy"],
                "train_wall_s": round(wall, 1),
                "train_s": meta["metrics"]["train_seconds"],
                "feature_images_per_s": features.get("images_per_s"),
                "feature_s": features.get("seconds"),
                "head_s": round(meta["metrics"]["train_seconds"] - features.get("seconds", 0), 1)
                if features
                else None,
                "predict_images_per_s": round(metrics["n_images"] / predict_s, 1),
                "precision": meta["metrics"]["precision"],
                "log_tail": log.strip().splitlines()[-3:],
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "log_tail"}), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", default=["cat,dog"], help="class pairs, comma-joined")
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("/tmp/imgcls-bench-photos"))
    p.add_argument("--train-arg", action="append", default=[], help="extra `imgcls train` flag")
    a = p.parse_args()
    if not CIFAR.is_dir():
        sys.exit(f"skipped: {CIFAR} not found")
    a.out.mkdir(parents=True, exist_ok=True)
    extra = [part for arg in a.train_arg for part in arg.split()]
    rows = [row for pair in a.pairs for row in run_pair(pair.split(","), a.per_class, a.out, extra)]
    print(
        f"\n{'pair':<18} {'way':<13} {'model':<19} {'held-out acc':>12} {'train wall s':>12} "
        f"{'features img/s':>14} {'head s':>7} {'predict img/s':>13}"
    )
    for r in rows:
        print(
            f"{r['pair']:<18} {r['way']:<13} {r['model']:<19} {r['held_out_accuracy']:>12.4f} "
            f"{r['train_wall_s']:>12.1f} {r['feature_images_per_s'] or '-':>14} "
            f"{r['head_s'] or '-':>7} {r['predict_images_per_s']:>13.1f}"
        )
    load = os.getloadavg()
    record = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "load": load, "rows": rows}
    print(f"results: {write_result('photos', record, ROOT / 'bench' / 'results')}")


if __name__ == "__main__":
    main()
