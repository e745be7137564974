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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"  # git-ignored
IMGCLS = [sys.executable, "-m", "imgcls"]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10" / "train"  # read-only, never committed


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
