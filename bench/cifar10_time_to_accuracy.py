"""Time to a trained model on CIFAR-10: `imgcls train` with no flags beside airbench94.

The 50,000 shared training JPEGs are split once (seeded, stratified) into 45,000 for training
and 5,000 held out; both systems train on the 45,000 and are scored on the 5,000.

- **imgcls**: ``imgcls train MANIFEST`` (the default `fast` recipe, no flags) from the JPEGs,
  with an empty cache (it decodes them), timed as a whole command; its test score is the held-out
  accuracy (with the recipe's test-time augmentation). Then a **second run** on the same data
  (``--epochs 1``) shows the fixed costs with the decoded-pixel cache warm: start-up, data and
  model build, the time before its first step.
- **airbench94** (``legacy/airbench94.py`` of github:KellerJordan/cifar10-airbench, given with
  ``--airbench``), patched only to run on the CPU in bfloat16 (no torchvision: its one use,
  ``Normalize``, is three lines; CUDA events become a wall clock; one run instead of 25), fed the
  same split as ``train.pt``/``test.pt`` decoded beforehand with Pillow. Timed as a whole
  process (start-up, loading its tensors, training, its own TTA evaluation).

Nothing else should run meanwhile; the load before and after is recorded.

    python bench/cifar10_time_to_accuracy.py --airbench path/to/airbench94.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import CIFAR, IMGCLS, ROOT, write_cifar_split, write_result

SHIM = """import time
class _Normalize:  # torchvision.transforms.Normalize on (N, C, H, W), in the tensor's dtype
    def __init__(self, mean, std):
        self.mean, self.std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
    def __call__(self, x):
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
class T:
    Normalize = _Normalize
class _Timer:  # torch.cuda.Event(enable_timing=True) on the CPU
    def record(self):
        self.t = time.perf_counter()
    def elapsed_time(self, end):
        return (end.t - self.t) * 1000
"""
PATCHES = [  # (upstream text, replacement): each must be found, so an upstream change is loud
    ("import torchvision\nimport torchvision.transforms as T\n", SHIM),
    ("gpu=0):", "gpu='cpu'):"),
    ("self.images.half()", "self.images.bfloat16()"),
    ("net = net.half().cuda()", "net = net.bfloat16()"),
    ("(torch.half, torch.float)", "(torch.bfloat16, torch.float)"),
    ("torch.cuda.Event(enable_timing=True)", "_Timer()"),
    ("torch.cuda.synchronize()", "None"),
    ("for run in range(25)", "for run in range(1)"),
]


FIRST_STEP_STAGES = ("start-up", "data", "model")  # what comes before the first step


def to_first_step(timeline: dict) -> float:
    """Seconds from the command to the first training step, from a run's timeline."""
    return round(sum(timeline.get(k, 0.0) for k in FIRST_STEP_STAGES), 2)


def run_imgcls(manifest: Path, out: Path, cache: Path, *flags: str, src: Path | None = None
               ) -> dict:  # fmt: skip
    """The whole ``imgcls train`` command, timed (``src``: another tree's sources first on the
    path); its bundle's metrics and timeline."""
    env = dict(os.environ, IMGCLS_CACHE=str(cache), TF_CPP_MIN_LOG_LEVEL="3",
               **({"PYTHONPATH": str(src)} if src else {}))  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run([*IMGCLS, "train", str(manifest), "--out", str(out), *flags],
                          env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"imgcls train failed:\n{proc.stderr[-3000:]}")
    meta = json.loads((out / "bundle.json").read_text())
    timeline = json.loads((out / "run.json").read_text()).get("timeline", {})
    return {"wall_s": round(wall, 1), "held_out_accuracy": meta["metrics"]["test_accuracy"],
            "epochs": meta["metrics"].get("epochs_run"), "timeline": timeline,
            "summary": proc.stderr.strip().splitlines()[-3:]}  # fmt: skip


def airbench_data(manifest: Path, folder: Path) -> None:
    """``folder/cifar10/{train,test}.pt`` as airbench's loader reads them, decoded by Pillow."""
    import torch
    from PIL import Image

    rows = [line.split(",") for line in manifest.read_text().splitlines()[1:]]
    classes = sorted({r[1] for r in rows})
    (folder / "cifar10").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        picked = [r for r in rows if r[2] == split]
        images = np.stack([np.asarray(Image.open(r[0]).convert("RGB")) for r in picked])
        labels = [classes.index(r[1]) for r in picked]
        torch.save({"images": torch.tensor(images), "labels": torch.tensor(labels),
                    "classes": classes}, folder / "cifar10" / f"{split}.pt")  # fmt: skip


def run_airbench(source: Path, folder: Path) -> dict:
    """The patched airbench94 in ``folder`` (which holds its data), timed as a whole process."""
    code = source.read_text()
    for old, new in PATCHES:
        if old not in code:
            sys.exit(f"{source}: expected {old!r}; is it legacy/airbench94.py?")
        code = code.replace(old, new)
    script = folder / "airbench94_cpu.py"
    script.write_text(code)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, script.name], cwd=folder, capture_output=True,
                          text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"airbench94 failed:\n{proc.stderr[-3000:]}")
    mean = re.search(r"Mean: ([0-9.]+)", proc.stdout)
    times = re.findall(r"\|\s+eval\s+\|.*", proc.stdout)
    return {"wall_s": round(wall, 1), "held_out_accuracy": float(mean.group(1)) if mean else None,
            "final_row": times[-1] if times else None}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--airbench", type=Path, help="legacy/airbench94.py of cifar10-airbench")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "time_to_accuracy")
    p.add_argument("--skip", choices=["imgcls", "airbench"], action="append", default=[])
    a = p.parse_args()
    if not CIFAR.is_dir():
        sys.exit(f"skipped: {CIFAR} not found")
    if "airbench" not in a.skip and (a.airbench is None or not a.airbench.is_file()):
        sys.exit("--airbench must name legacy/airbench94.py (or pass --skip airbench)")
    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    manifest = write_cifar_split(CIFAR, a.out)
    record = {"machine": f"{platform.machine()} {os.cpu_count()} cores",
              "load_before": os.getloadavg(), "split": "45,000 train / 5,000 held out"}  # fmt: skip
    if "airbench" not in a.skip:
        airbench_data(manifest, a.out / "airbench")
        record["airbench94"] = run_airbench(a.airbench, a.out / "airbench")
        print("airbench94:", record["airbench94"], flush=True)
    if "imgcls" not in a.skip:
        cache = a.out / "cache"  # empty: the first run decodes the JPEGs
        record["imgcls"] = run_imgcls(manifest, a.out / "run", cache)
        print("imgcls:", record["imgcls"], flush=True)
        second = run_imgcls(manifest, a.out / "again", cache, "--epochs", "1")
        second["to_first_step_s"] = to_first_step(second["timeline"])
        record["imgcls_second_run"] = second
        print("imgcls, second run:", second, flush=True)
    record["load_after"] = os.getloadavg()
    print(f"results: {write_result('cifar10_time_to_accuracy', record)}")


if __name__ == "__main__":
    main()
