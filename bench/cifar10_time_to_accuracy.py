"""Accuracy and wall time of `fast` and `classic` on CIFAR-10 JPEGs under the same time budget.

The 50,000 training JPEGs are split once (seeded, stratified) into 45,000 for training and
5,000 held-out test images that no run tunes on. Each model trains through the real CLI with
its recipe and ``--max-time`` set to the budget less a set-up allowance, so the whole command
(start-up, decoding, first epoch, compilation, final test pass) fits in the budget's wall
time; under a binding budget the learning-rate schedule decays by the clock. Then `imgcls evaluate` scores it on the held-out images, with the test-time
augmentation its recipe saved in the bundle (`fast`: flips and 1-pixel shifts) and without.

Usage: python bench/cifar10_time_to_accuracy.py [--budget-min 20] [--models fast classic]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import CIFAR, IMGCLS, ROOT, timed, write_result

TEST_PER_CLASS = 500  # 5,000 held-out test images in all
# --max-time counts training only; start-up, decoding 50,000 JPEGs and the final test pass
# (~40 s together) must fit in the same wall-clock budget, so training gets this much less.
SETUP_ALLOWANCE_MIN = 0.75


def write_manifest(out: Path, seed: int = 0) -> Path:
    """CSV with split=train for 45,000 images and split=test for 5,000, stratified."""
    rng = np.random.default_rng(seed)
    rows = []
    for cls in sorted(p.name for p in CIFAR.iterdir() if p.is_dir()):
        files = sorted(str(p) for p in (CIFAR / cls).glob("*.jpg"))
        test = set(rng.choice(len(files), TEST_PER_CLASS, replace=False).tolist())
        rows += [f"{f},{cls},{'test' if i in test else 'train'}" for i, f in enumerate(files)]
    path = out / "cifar10_45k_5k.csv"
    path.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-min", type=float, default=20.0)
    parser.add_argument("--models", nargs="+", default=["fast", "classic"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if not CIFAR.is_dir():
        sys.exit(f"skipped: {CIFAR} not found")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(out)
    imgcls = IMGCLS
    results = []
    for model in args.models:
        run_dir = out / f"tta-{model}"
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        wall, log = timed(
            [
                *imgcls,
                "train",
                str(manifest),
                "--out",
                str(run_dir),
                "--model",
                model,
                "--val-split",
                "0",
                "--max-time",
                str(args.budget_min - SETUP_ALLOWANCE_MIN),
                "--quiet",
            ]
        )
        meta = json.loads((run_dir / "bundle.json").read_text())
        scores = {}
        for tta in ("recipe", "none"):  # the test-time augmentation the bundle asks for, and none
            eval_dir = Path(f"{run_dir}-eval-{tta}")
            subprocess.run(["rm", "-rf", str(eval_dir)], check=True)
            extra = [] if tta == "recipe" else ["--tta", "none"]
            timed(
                [*imgcls, "evaluate", str(run_dir), str(manifest), "--out", str(eval_dir), *extra]
            )
            scores[tta] = json.loads((eval_dir / "metrics.json").read_text())
        epoch_s = _epoch_seconds(run_dir / "history.csv")
        results.append(
            {
                "model": model,
                "test_accuracy": scores["recipe"]["accuracy"],
                "tta": scores["recipe"]["tta"],
                "test_accuracy_no_tta": scores["none"]["accuracy"],
                "n_test": scores["recipe"]["n_images"],
                "wall_s": round(wall, 1),
                "train_s": meta["metrics"]["train_seconds"],
                "epochs_run": meta["metrics"]["epochs_run"],
                "epochs_planned": meta["config"]["epochs"],
                "stopped": meta["metrics"]["stopped"],
                "precision": meta["metrics"]["precision"],
                # A max far above the median flags stalls (it caught a 34-s tf.data teardown).
                "epoch_s_median": round(float(np.median(epoch_s)), 1),
                "epoch_s_max": round(float(np.max(epoch_s)), 1),
            }
        )
        print(f"{model}: {results[-1]}", flush=True)
    base = next((r for r in results if r["model"] == "classic"), results[0])
    print(
        f"\n{'model':<8} {'test acc':>8} {'TTA':>15} {'no TTA':>7} {'wall min':>9} {'epochs':>7} "
        f"{'epoch s (median/max)':>21} {'acc vs classic':>15}"
    )
    for r in results:
        print(
            f"{r['model']:<8} {r['test_accuracy']:>8.4f} {r['tta']:>15} {r['test_accuracy_no_tta']:>7.4f} "
            f"{r['wall_s'] / 60:>9.1f} {r['epochs_run']:>3}/{r['epochs_planned']:<3} "
            f"{r['epoch_s_median']:>13.1f}/{r['epoch_s_max']:<7.1f} "
            f"{r['test_accuracy'] / base['test_accuracy']:>14.3f}x"
        )
    record = {
        "budget_min": args.budget_min,
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "results": results,
    }
    write_result("cifar10_time_to_accuracy", record, out)


def _epoch_seconds(history: Path) -> np.ndarray:
    """Wall seconds of each epoch, from the cumulative ``elapsed_s`` column of history.csv."""
    with open(history) as f:
        elapsed = [float(row["elapsed_s"]) for row in csv.DictReader(f)]
    return np.diff([0.0, *elapsed])


if __name__ == "__main__":
    main()
