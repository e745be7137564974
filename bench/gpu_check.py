"""A GPU check anyone can run: `fast` on CIFAR-10 through `imgcls train`, JAX backend, no TensorFlow.

Splits the 50,000 CIFAR-10 JPEGs 45,000/5,000 (seed 0, stratified: `write_cifar_split` of
bench/_common.py, the split and row order every CIFAR-10 benchmark trains on), trains `fast`
with its recipe (mixed_bfloat16 on an Ampere-or-newer GPU), scores the 5,000 held-out images
with the bundle's test-time augmentation, and prints training images/s, the training wall time
(compile included), the whole process's wall time, test accuracy and the share of step time the
model waited for data.
Targets (issue "Beyond one CPU"): >= 0.90 accuracy, <= 15 s of training, <= 30 s for the whole
`imgcls train` process, data wait < 10%.

On a machine with JAX and no TensorFlow (Keras and imgcls installed from wheels):

    python bench/gpu_check.py --data /path/to/cifar10/train
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import CIFAR, write_cifar_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=CIFAR)
    p.add_argument("--out", type=Path, default=Path("/tmp/imgcls-gpu-check"))
    p.add_argument("--backend", default="jax", choices=["jax", "torch", "tensorflow"])
    p.add_argument("--train-per-class", type=int, help="fewer training images (a quick check)")
    p.add_argument(
        "--extra", default="", help='more `imgcls train` flags, e.g. --extra="--epochs 2"'
    )
    a = p.parse_args()
    if not a.data.is_dir():
        sys.exit(f"skipped: CIFAR-10 folder {a.data} not found (--data)")
    a.out.mkdir(parents=True, exist_ok=True)
    manifest = write_cifar_split(a.data, a.out, train_per_class=a.train_per_class)
    run = a.out / f"fast-{a.backend}"
    subprocess.run(["rm", "-rf", str(run)], check=True)
    env = dict(os.environ, KERAS_BACKEND=a.backend)
    imgcls = [sys.executable, "-m", "imgcls"]
    cmd = [*imgcls, "train", str(manifest), "--out", str(run), "--model", "fast",
           "--val-split", "0", *shlex.split(a.extra)]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - t0
    meta = json.loads((run / "bundle.json").read_text())
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    waits = [float(r["data_wait"]) for r in history if r.get("data_wait")]
    n_train = meta["data"]["split_counts"]["train"]
    train_s = meta["metrics"]["train_seconds"]
    result = {
        "backend": a.backend,
        "devices": _devices(a.backend),
        "epochs": meta["metrics"]["epochs_run"],
        "precision": meta["metrics"]["precision"],
        "train_images_per_s": round(n_train * meta["metrics"]["epochs_run"] / train_s),
        "train_s": train_s,
        "first_epoch_s": float(history[0]["elapsed_s"]),
        "process_wall_s": round(wall, 1),
        "test_accuracy": meta["metrics"]["test_accuracy"],
        "tta": meta["tta"],
        "data_wait_median": statistics.median(waits) if waits else None,
        "data_wait_after_first_epoch": statistics.median(waits[1:]) if len(waits) > 1 else None,
    }
    print(json.dumps(result, indent=2))
    (a.out / f"gpu_check_{a.backend}.json").write_text(json.dumps(result, indent=2) + "\n")


def _devices(backend: str) -> list[str]:
    code = {
        "jax": "import jax; print([str(d) for d in jax.devices()])",
        "torch": "import torch; print([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])",
        "tensorflow": "import tensorflow as tf; print(tf.config.list_physical_devices('GPU'))",
    }[backend]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return [r.stdout.strip() or r.stderr.strip()[-200:]]


if __name__ == "__main__":
    main()
