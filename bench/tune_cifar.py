"""`imgcls tune` on a 10,000-image CIFAR-10 subset: default vs tuned, validation and test.

Builds a CSV of ``--images`` CIFAR-10 JPEGs (a tenth of them per class, no split column, so
`imgcls tune` carves validation and test as it would for a user), then runs

    imgcls tune DATA --out DIR --model fast --max-time MIN --trials 100

and reports: trials run, the recipe's own validation accuracy (trial 1) and the best one, each
trial's peak memory (and the searching process's own), and the test accuracy of the tuned model
(`DIR/best`, retrained on train+validation, tested once by tune) beside the test accuracy of
the recipe's settings retrained the same way (this benchmark's one extra read of the test split,
for the comparison only).

    python bench/tune_cifar.py --images 10000 --minutes 30
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _common import IMGCLS, cifar_workspace, timed, write_result
from backends_cpu import manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--minutes", type=float, default=30.0, help="--max-time of the search")
    p.add_argument("--model", default="fast")
    p.add_argument("--out", type=Path, default=Path("/tmp/imgcls-bench-tune"))
    a = p.parse_args()
    cifar_workspace(a.out)
    data = manifest(a.out, a.images)
    search = a.out / "search"
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    _, log = timed([*IMGCLS, "tune", str(data), "--out", str(search), "--model", a.model,
                    "--max-time", str(a.minutes), "--trials", "100"])  # fmt: skip
    wall = time.perf_counter() - t0
    record = json.loads((search / "tune.json").read_text())
    with open(search / "trials.csv", newline="") as f:
        trials = list(csv.DictReader(f))
    done = [t for t in trials if t["status"] == "completed"]

    # The recipe's settings (trial 1) retrained on train+validation like best/, then tested.
    default = a.out / "default"
    first = done[0]
    timed([*IMGCLS, "train", str(data), "--out", str(default), "--model", a.model,
           "--split-file", str(search / "final_split.csv"), "--epochs", first["epochs_run"]])  # fmt: skip
    test_csv = _test_manifest(data, search / "split.csv", a.out / "test.csv")
    timed([*IMGCLS, "evaluate", str(default), str(test_csv), "--out", str(a.out / "default-eval")])
    default_test = json.loads((a.out / "default-eval" / "metrics.json").read_text())

    peaks = [float(t["peak_rss_mb"]) for t in trials]
    result = {
        "command": f"python bench/tune_cifar.py --images {a.images} --minutes {a.minutes}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_1min_at_start": load0,
        "trials": len(trials),
        "completed": len(done),
        "search_wall_s": round(wall, 1),
        "default_val_accuracy": float(first["val_accuracy"]),
        "tuned_val_accuracy": record["best"]["val_accuracy"],
        "best_trial": record["best"]["trial"],
        "best_values": record["best"]["values"],
        "default_test_accuracy": default_test["accuracy"],
        "tuned_test_accuracy": record["test"]["accuracy"],
        "tuned_test_ci95": record["test"]["ci95"],
        "test_images": record["test"]["n_images"],
        "trial_peak_rss_mb": {
            "first": peaks[0],
            "last": peaks[-1],
            "median": statistics.median(peaks),
            "max": max(peaks),
        },
        "search_process_peak_rss_mb": record.get("search_process_peak_rss_mb"),
        "trial_seconds_median": statistics.median(float(t["seconds"]) for t in trials),
        "log_tail": log.strip().splitlines()[-6:],
    }
    print(json.dumps(result, indent=2))
    print(f"wrote {write_result('tune_cifar', result)}")


def _test_manifest(data: Path, split_csv: Path, out: Path) -> Path:
    """The test split's rows of ``data`` (a CSV of path,label)."""
    with open(split_csv, newline="") as f:
        test = {r["id"] for r in csv.DictReader(f) if r["split"] == "test"}
    with open(data, newline="") as f:
        matched = [r for r in csv.DictReader(f) if r["path"] in test]  # a CSV's ids are its paths
    if len(matched) != len(test):
        sys.exit("could not match the test ids of split.csv to the manifest's paths")
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([r["path"], r["label"]] for r in matched)
    return out


if __name__ == "__main__":
    main()
