"""What every benchmark shares: the repo root, running the real CLI, and writing results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"  # git-ignored
IMGCLS = [sys.executable, "-m", "imgcls"]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10" / "train"  # read-only, never committed
TEST_PER_CLASS = 500  # the CIFAR-10 benchmarks hold out 5,000 of the 50,000 images


def link_images(root: Path, images: list[tuple[int, Path, str | None]]) -> None:
    """``root`` emptied, then ``root/<label>/<i>.jpg`` (``root/<i>.jpg`` for a ``None`` label)
    as a symbolic link to each ``(i, path, label)``: numbered, since CIFAR's names repeat per
    class; nothing is copied."""
    shutil.rmtree(root, ignore_errors=True)
    for i, path, label in images:
        folder = root / label if label is not None else root
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(path, folder / f"{i:05d}.jpg")


def write_manifest(path: Path, pairs: list[tuple[Path, str]]) -> Path:
    """A ``path,label`` CSV of ``(path, label)`` pairs (a held-out test set)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in pairs))
    return path


def write_cifar_split(
    cifar: Path, out: Path, seed: int = 0, train_per_class: int | None = None
) -> Path:
    """``out/cifar10_45k_5k.csv``: a ``path,label,split`` manifest of the CIFAR-10 folder with
    ``TEST_PER_CLASS`` images a class held out (``split=test``, drawn with ``seed``) and the
    rest to train (the first ``train_per_class`` of them a class, for a quick check). Rows
    follow the folder's sorted order, so one seed is one split and one training order for
    every benchmark that trains on it."""
    rng = np.random.default_rng(seed)
    rows = []
    for cls in sorted(p.name for p in cifar.iterdir() if p.is_dir()):
        files = sorted(str(p) for p in (cifar / cls).glob("*.jpg"))
        test = set(rng.choice(len(files), TEST_PER_CLASS, replace=False).tolist())
        kept = 0
        for i, f in enumerate(files):
            if i in test:
                rows.append(f"{f},{cls},test")
            elif train_per_class is None or kept < train_per_class:
                rows.append(f"{f},{cls},train")
                kept += 1
    path = out / "cifar10_45k_5k.csv"
    path.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return path


def timed(cmd: list[str]) -> tuple[float, str]:
    """Run ``cmd``; return (wall seconds, stdout + stderr). Exit with its stderr if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    )
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, proc.stdout + proc.stderr


def write_result(name: str, obj: Any, folder: Path = RESULTS) -> Path:
    """Write ``obj`` as ``folder/name.json`` and return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def cifar_workspace(out: Path) -> Path:
    """``out`` emptied for a CIFAR-10 benchmark; exits (skipped) without the CIFAR-10 folder."""
    if not CIFAR.is_dir():
        sys.exit(f"skipped: CIFAR-10 folder {CIFAR} not found")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


def train_and_score(
    data: Path, test_csv: Path, out: Path, seed: int, *flags: str, model: str = "fast"
) -> float:
    """``model`` (default recipe, ``--test-split 0``, and ``flags``) trained on ``data`` through
    the CLI, then its accuracy on every image of ``test_csv`` from ``imgcls evaluate``."""
    shutil.rmtree(out, ignore_errors=True)
    timed([*IMGCLS, "train", str(data), "--out", str(out), "--model", model,
           "--test-split", "0", "--seed", str(seed), "--quiet", *flags])  # fmt: skip
    timed([*IMGCLS, "evaluate", str(out), str(test_csv), "--split", "all", "--out",
           str(out / "eval")])  # fmt: skip
    return json.loads((out / "eval" / "metrics.json").read_text())["accuracy"]
