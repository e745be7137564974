"""Label-issue detection on CIFAR-10 with 5% of the labels flipped: precision and recall.

    .venv/bin/python bench/label_noise.py [--n 10000] [--noise 0.05] [--from-run RUN]

Writes a CSV manifest of an N-image class-balanced subset of /work/shared/datasets/cifar10/train
with ``noise`` of the labels changed to another class at random, runs
``imgcls.data.prepare.prepare(..., label_issues=True)`` and compares the flagged images with the
flipped ones. Prints a table and writes bench/results/label_noise.json.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import IMGCLS, RESULTS, timed, write_result

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10" / "train"


def train_on_rest(
    tmp: Path, subset: set[str], classes: list[str], epochs: int
) -> tuple[str, float]:
    """Train `fast` on every CIFAR image outside ``subset`` (true labels); return (run, seconds)."""
    rest = tmp / "rest.csv"
    with open(rest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for name in classes:
            writer.writerows(
                (str(CIFAR / name / x), name)
                for x in sorted(os.listdir(CIFAR / name))
                if str(CIFAR / name / x) not in subset
            )
    run = RESULTS / "label-noise-rest-run"  # kept, so other filters can be tried with --from-run
    subprocess.run(["rm", "-rf", str(run)], check=True)
    seconds, _ = timed(
        [
            *IMGCLS,
            "train",
            str(rest),
            "--out",
            str(run),
            "--model",
            "fast",
            "--epochs",
            str(epochs),
            "--val-split",
            "0.02",
            "--test-split",
            "0",
            "--quiet",
        ]
    )
    return str(run), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, default=10_000, help="images in the subset (balanced over classes)"
    )
    parser.add_argument("--noise", type=float, default=0.05, help="fraction of labels flipped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--from-run", help="take probabilities from this run instead of cross-validation"
    )
    parser.add_argument(
        "--rest-epochs",
        type=int,
        help="first train `fast` for this many epochs on the CIFAR "
        "images outside the subset, and take the probabilities from that run",
    )
    args = parser.parse_args()
    if not CIFAR.is_dir():
        print(f"skipped: {CIFAR} not found")
        return 0
    from imgcls.data.prepare import prepare
    from imgcls.predict import RunProbabilities

    rng = np.random.default_rng(args.seed)
    classes = sorted(d.name for d in CIFAR.iterdir() if d.is_dir())
    per_class = args.n // len(classes)
    rows = []
    for k, name in enumerate(classes):
        files = sorted(os.listdir(CIFAR / name))
        rows += [(str(CIFAR / name / f), k) for f in rng.choice(files, per_class, replace=False)]
    flipped = rng.choice(len(rows), int(round(args.noise * len(rows))), replace=False)
    given = np.array([k for _, k in rows])
    given[flipped] = (given[flipped] + rng.integers(1, len(classes), len(flipped))) % len(classes)
    with tempfile.TemporaryDirectory() as tmp:
        train_s = 0.0
        if args.rest_epochs:
            args.from_run, train_s = train_on_rest(
                Path(tmp), {p for p, _ in rows}, classes, args.rest_epochs
            )
        manifest = Path(tmp) / "noisy.csv"
        with open(manifest, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows((p, classes[g]) for (p, _), g in zip(rows, given, strict=True))
        t0 = time.perf_counter()
        result = prepare(
            manifest,
            Path(tmp) / "out",
            image_size=(32, 32),
            label_issues=True,
            seed=args.seed,
            probabilities=RunProbabilities(args.from_run) if args.from_run else None,
        )
        seconds = time.perf_counter() - t0
        scan_seconds = result.report["seconds"]
    truth = {rows[i][0] for i in flipped}
    flagged = {r["path"] for r in result.report["issues"] if r["kind"] == "label_issue"}
    hits = len(truth & flagged)
    figures = {
        "n_images": len(rows),
        "n_flipped": len(truth),
        "n_flagged": len(flagged),
        "true_positives": hits,
        "precision": round(hits / max(1, len(flagged)), 4),
        "recall": round(hits / max(1, len(truth)), 4),
        "seconds_total": round(seconds + train_s, 1),
        "seconds_training_rest": round(train_s, 1),
        "method": (
            f"fast trained {args.rest_epochs} epochs on the other {50_000 - len(rows):,} images"
            if args.rest_epochs
            else f"run {args.from_run}"
            if args.from_run
            else "5-fold CV, k-means patch features + logistic regression"
        ),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "python": sys.version.split()[0],
    }
    print(
        f"{'images':>8} {'flipped':>8} {'flagged':>8} {'precision':>10} {'recall':>8} {'seconds':>8}"
    )
    print(
        f"{len(rows):>8} {len(truth):>8} {len(flagged):>8} {figures['precision']:>10.3f} "
        f"{figures['recall']:>8.3f} {seconds:>8.1f}"
    )
    print(f"({figures['method']}; prepare report seconds {scan_seconds})")
    write_result("label_noise", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
