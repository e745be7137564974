"""`fast` on each Keras backend on this CPU: seconds per epoch, images/s, data-wait share.

Trains `fast` (its recipe, `--precision auto`) for ``--epochs`` epochs on ``--images`` CIFAR-10
JPEGs through the CLI with KERAS_BACKEND set, and reads history.csv: the last epoch's seconds
(the first includes compilation), images/s and the share of step time spent waiting for data.

    python bench/backends_cpu.py --images 10000 --epochs 2
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
from _common import CIFAR, IMGCLS, write_result


def manifest(out: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for cls in sorted(p.name for p in CIFAR.iterdir() if p.is_dir()):
        files = sorted(str(p) for p in (CIFAR / cls).glob("*.jpg"))
        rows += [f"{files[i]},{cls}" for i in rng.choice(len(files), n // 10, replace=False)]
    path = out / f"cifar10_{n}.csv"
    path.write_text("path,label\n" + "\n".join(rows) + "\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("/tmp/imgcls-bench-backends"))
    p.add_argument("--backends", nargs="+", default=["tensorflow", "torch", "jax"])
    a = p.parse_args()
    if not CIFAR.is_dir():
        sys.exit(f"skipped: {CIFAR} not found")
    a.out.mkdir(parents=True, exist_ok=True)
    data = manifest(a.out, a.images)
    rows = []
    for backend in a.backends:
        run = a.out / backend
        subprocess.run(["rm", "-rf", str(run)], check=True)
        cmd = [*IMGCLS, "train", str(data), "--out", str(run), "--model", "fast", "--epochs",
               str(a.epochs), "--val-split", "0", "--test-split", "0", "--quiet"]  # fmt: skip
        subprocess.run(cmd, check=True, env=dict(os.environ, KERAS_BACKEND=backend))
        with open(run / "history.csv") as f:
            history = list(csv.DictReader(f))
        meta = json.loads((run / "bundle.json").read_text())
        elapsed = [float(r["elapsed_s"]) for r in history]
        epoch_s = np.diff([0.0, *elapsed])
        n = meta["data"]["split_counts"]["train"]
        rows.append({
            "backend": backend,
            "precision": meta["metrics"]["precision"],
            "first_epoch_s": round(float(epoch_s[0]), 1),
            "last_epoch_s": round(float(epoch_s[-1]), 1),
            "images_per_s": round(n / float(epoch_s[-1])),
            "data_wait": float(history[-1].get("data_wait") or 0),
        })  # fmt: skip
        print(rows[-1], flush=True)
    tf = next((r for r in rows if r["backend"] == "tensorflow"), rows[0])
    print(
        f"\n{'backend':<11} {'precision':<15} {'1st epoch s':>11} {'epoch s':>8} {'img/s':>7} {'wait':>6} {'vs TF':>6}"
    )
    for r in rows:
        print(f"{r['backend']:<11} {r['precision']:<15} {r['first_epoch_s']:>11} {r['last_epoch_s']:>8} "
              f"{r['images_per_s']:>7} {r['data_wait']:>6.1%} {r['images_per_s'] / tf['images_per_s']:>5.2f}x")  # fmt: skip
    write_result(
        "backends_cpu", {"machine": f"{platform.machine()} {os.cpu_count()} cores", "rows": rows}
    )


if __name__ == "__main__":
    main()
