"""Accuracy and wall time of `fast` and `classic` on CIFAR-10 JPEGs under the same time budget.

The 50,000 training JPEGs are split once (seeded, stratified) into 45,000 for training and
5,000 held-out test images that no run tunes on. Each model trains through the real CLI with
``--max-time`` as its budget (first epoch, decoding and compilation included in the wall
time), then `imgcls evaluate` scores it on the held-out images.

Usage: python bench/cifar10_time_to_accuracy.py [--budget-min 20] [--models fast classic]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import IMGCLS, ROOT, timed, write_result

CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10" / "train"
TEST_PER_CLASS = 500  # 5,000 held-out test images in all


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
        subprocess.run(
            ["rm", "-rf", str(run_dir), str(run_dir) + "-eval", str(run_dir) + "-tta"], check=True
        )
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
                str(args.budget_min),
                "--quiet",
            ]
        )
        meta = json.loads((run_dir / "bundle.json").read_text())
        _, _ = timed(
            [*imgcls, "evaluate", str(run_dir), str(manifest), "--out", str(run_dir) + "-eval"]
        )
        metrics = json.loads((Path(str(run_dir) + "-eval") / "metrics.json").read_text())
        _, _ = timed(
            [
                *imgcls,
                "evaluate",
                str(run_dir),
                str(manifest),
                "--out",
                str(run_dir) + "-tta",
                "--tta",
            ]
        )
        tta = json.loads((Path(str(run_dir) + "-tta") / "metrics.json").read_text())
        results.append(
            {
                "model": model,
                "test_accuracy": metrics["accuracy"],
                "n_test": metrics["n_images"],
                "test_accuracy_flip_tta": tta["accuracy"],
                "wall_s": round(wall, 1),
                "train_s": meta["metrics"]["train_seconds"],
                "epochs_run": meta["metrics"]["epochs_run"],
                "epochs_planned": meta["config"]["epochs"],
                "stopped": meta["metrics"]["stopped"],
                "precision": meta["metrics"]["precision"],
            }
        )
        print(f"{model}: {results[-1]}", flush=True)
    base = next((r for r in results if r["model"] == "classic"), results[0])
    print(
        f"\n{'model':<8} {'test acc':>8} {'+flip TTA':>9} {'wall min':>9} {'epochs':>7} {'acc vs classic':>15}"
    )
    for r in results:
        print(
            f"{r['model']:<8} {r['test_accuracy']:>8.4f} {r['test_accuracy_flip_tta']:>9.4f} {r['wall_s'] / 60:>9.1f} "
            f"{r['epochs_run']:>3}/{r['epochs_planned']:<3} {r['test_accuracy'] / base['test_accuracy']:>14.3f}x"
        )
    record = {
        "budget_min": args.budget_min,
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "results": results,
    }
    write_result("cifar10_time_to_accuracy", record, out)


if __name__ == "__main__":
    main()
