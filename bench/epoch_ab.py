"""`fast`'s CPU epoch on TensorFlow: this tree against an earlier commit, measured in one run.

Both trees train `fast` (its recipe, ``--epochs N``) through the real CLI on the same 45,000
CIFAR-10 JPEGs (5,000 held out, as bench/cifar10_time_to_accuracy.py splits them), in
alternating processes (base, this, base, this, ...) so that drift in the machine's speed falls
on both. An epoch's time is the difference of consecutive ``elapsed_s`` in ``history.csv``;
the first epoch (graph tracing) is left out. The base tree is ``git archive`` of ``--base``,
imported through ``PYTHONPATH`` with the same installed packages.

Usage: python bench/epoch_ab.py [--base eac690c] [--rounds 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from _common import CIFAR, IMGCLS, ROOT, write_cifar_split, write_result


def epoch_seconds(run: Path) -> list[float]:
    """Seconds of each epoch after the first, from ``history.csv``."""
    with open(run / "history.csv", newline="") as f:
        elapsed = [float(r["elapsed_s"]) for r in csv.DictReader(f)]
    return [b - a for a, b in zip(elapsed, elapsed[1:], strict=False)]


def train(src: Path, manifest: Path, run: Path, epochs: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), TF_CPP_MIN_LOG_LEVEL="3")
    load = os.getloadavg()[0]
    cmd = [*IMGCLS, "train", str(manifest), "--out", str(run), "--model", "fast"]
    proc = subprocess.run([*cmd, "--epochs", str(epochs), "--quiet"], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"failed ({src}): {proc.stderr[-3000:]}")
    accuracy = next(
        (float(line.split()[2]) for line in proc.stdout.splitlines() if "test accuracy" in line),
        None,
    )
    return {"epochs_s": epoch_seconds(run), "test_accuracy": accuracy, "load_1min": load}


def base_tree(commit: str, folder: Path) -> Path:
    """``commit``'s files under ``folder`` (its src/ is what PYTHONPATH points at)."""
    archive = folder / "base.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "base", filter="data")
    return folder / "base" / "src"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="eac690c", help="commit to compare against")
    p.add_argument("--rounds", type=int, default=3, help="runs of each tree, alternating")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is dropped)")
    a = p.parse_args()
    if not CIFAR.is_dir():
        sys.exit(f"skipped: CIFAR-10 folder {CIFAR} not found")
    work = Path(tempfile.mkdtemp(prefix="imgcls-epoch-ab-"))
    manifest = write_cifar_split(CIFAR, work)
    trees = {f"base {a.base}": base_tree(a.base, work), "this tree": ROOT / "src"}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(a.rounds):
        for name, src in trees.items():
            result = train(src, manifest, work / f"{name.split()[0]}-{r}", a.epochs)
            runs[name].append(result)
            print(
                f"round {r + 1} {name}: epochs {result['epochs_s']} s, load {result['load_1min']:.2f}"
            )
    medians = {n: statistics.median(s for r in rs for s in r["epochs_s"]) for n, rs in runs.items()}
    base, this = medians.values()
    print(f"\n{'tree':<20} {'median epoch s':>15} {'test acc':>10}")
    for name, rs in runs.items():
        accs = ", ".join(f"{r['test_accuracy']:.4f}" for r in rs)
        print(f"{name:<20} {medians[name]:>15.2f} {accs:>10}")
    print(f"ratio this/base: {this / base:.3f}")
    path = write_result("epoch_ab", {"runs": runs, "median_epoch_s": medians, "ratio": this / base,
                                      "epochs": a.epochs, "base": a.base})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
