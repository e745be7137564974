"""A folder of real photos, through the real CLI: today's default against this tree's, in one run.

Rows (each a fresh ``imgcls train DATA --out RUN`` process with a fresh ``$IMGCLS_CACHE``, so
weight conversion, decoding and the backbone's export are all paid, as on a first run):

- ``--data``/``--held``: a folder per class to train on and a held-out folder of other photos
  of the same classes (``imgcls evaluate RUN HELD``: photos no run saw or was tuned on);
- ``--two``: the same for a small two-class set (a few hundred photos);
- ``--base COMMIT``: today's default, run from a ``git worktree`` of COMMIT on the same data;
- ``--variant NAME=JSON``: this tree with recipe fields of ``efficientnet_lite0`` replaced
  (``{"top_blocks": 5}``; ``{"engine": "onnx"}`` runs the frozen bottom in float32);
- ``--scale DIR...``: folders without a held-out set, for time and memory as the photos grow.

Peak memory is each training process's high-water mark (``wait4``'s ``ru_maxrss``). The feature
pass is also timed side by side in this process (``--pass-images`` photos, 4 views each): the
whole backbone in Keras (today), the frozen bottom in ONNX Runtime float32 and int8.

    python bench/photo_folder.py --data D --held H --two D2 H2 --base 9b9217b \\
        --variant 'float={"engine": "onnx"}' --scale /data/scale3k /data/scale30k
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, write_result

VARIANT = """
import dataclasses, json, sys
from imgcls import models
from imgcls.train import frozen
changes = json.loads(sys.argv[1])
engine = changes.pop("engine", None)
models._load_families()
spec = models._REGISTRY["efficientnet_lite0"]
recipe = dataclasses.replace(spec.recipe, **changes)
models._REGISTRY["efficientnet_lite0"] = dataclasses.replace(spec, recipe=recipe)
if engine:  # this engine for the frozen bottom instead of the default's
    default_runner = frozen.frozen_runner
    frozen.frozen_runner = lambda model, *args, **kwargs: default_runner(model, engine)
from imgcls.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_process(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run ``cmd``; (wall seconds, peak RSS in MB, stderr). Exit with its stderr if it fails."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        err.seek(0)
        log = err.read()
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{log[-3000:]}")
    return wall, usage.ru_maxrss // 1024, log


def train_row(name: str, data: Path, held: Path | None, out: Path, how: str, arg: str) -> dict:
    """One ``imgcls train`` (``how``: ``tree``, ``base`` or ``variant``), evaluated on ``held``."""
    run = out / name
    shutil.rmtree(run, ignore_errors=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", IMGCLS_CACHE=str(out / f"cache-{name}"))
    shutil.rmtree(env["IMGCLS_CACHE"], ignore_errors=True)
    train = ["train", str(data), "--out", str(run)]
    if how == "base":
        env["PYTHONPATH"] = str(Path(arg) / "src")
        cmd = [sys.executable, "-m", "imgcls", *train]
    elif how == "variant":
        cmd = [sys.executable, "-c", VARIANT, arg, *train]
    else:
        cmd = [sys.executable, "-m", "imgcls", *train]
    wall, peak, log = run_process(cmd, env)
    meta = json.loads((run / "bundle.json").read_text())
    row = {
        "row": name,
        "photos": sum(1 for p in data.rglob("*") if p.is_file()),
        "wall_s": round(wall, 1),
        "peak_rss_mb": peak,
        "own_test": meta["metrics"].get("test_accuracy"),
        "feature_pass": meta["metrics"].get("feature_pass"),
        "epochs": meta["config"]["epochs"],
        "first_lines": log.splitlines()[:3],
    }
    if held is not None:
        ev = run / "eval"
        cmd = [sys.executable, "-m", "imgcls", "evaluate", str(run), str(held), "--out", str(ev)]
        run_process(cmd, {**env, "PYTHONPATH": env.get("PYTHONPATH", "")})
        row["held_out"] = json.loads((ev / "metrics.json").read_text())["accuracy"]
    print(json.dumps(row), flush=True)
    shutil.rmtree(env["IMGCLS_CACHE"], ignore_errors=True)
    return row


def feature_pass(data: Path, n: int, views: int = 4) -> list[dict]:
    """images/s of the views of ``n`` photos: Keras' whole backbone, ONNX bottom f32 / int8."""
    import numpy as np

    from imgcls.data.augment import PHOTO_AUGMENT
    from imgcls.data.pipeline import decode_images
    from imgcls.data.sources import load_source
    from imgcls.models import create_model, get_spec
    from imgcls.models.applications import cut_layer, split_at
    from imgcls.train.features import view_pixels
    from imgcls.train.frozen import frozen_runner

    images = load_source(str(data))
    pick = np.random.default_rng(0).choice(len(images), min(n, len(images)), replace=False)
    x = decode_images(images.subset(np.sort(pick)), (224, 224)).pixels
    x = np.asarray(x)
    model = create_model("efficientnet_lite0", (224, 224, 3), 5, weights="imagenet")
    whole = model.get_layer("backbone")
    bottom = split_at(model, cut_layer(model, get_spec("efficientnet_lite0").recipe.top_blocks))[0]
    rows = []
    for name, net, engine in (("Keras, whole backbone (today)", whole, "keras"),
                              ("ONNX Runtime f32, bottom", bottom, "onnx"),
                              ("ONNX Runtime int8, bottom", bottom, "onnx-int8")):  # fmt: skip
        run, _ = frozen_runner(net, engine, calibration=x[:32])
        run(view_pixels(x[:32], 0, (), 0, 0))  # warm
        t0 = time.perf_counter()
        for v in range(views):
            for s in range(0, len(x), 32):
                run(view_pixels(x[s : s + 32], v, PHOTO_AUGMENT, 0, s))
        seconds = time.perf_counter() - t0
        rows.append({"engine": name, "images": views * len(x),
                     "images_per_s": round(views * len(x) / seconds, 1)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--held", type=Path, required=True)
    p.add_argument("--two", type=Path, nargs=2, metavar=("DATA", "HELD"))
    p.add_argument("--base", help="a commit: today's default, from a git worktree")
    p.add_argument("--variant", action="append", default=[], help="NAME=JSON recipe changes")
    p.add_argument("--scale", type=Path, nargs="*", default=[])
    p.add_argument("--label", default="five", help="the name of --data's rows")
    p.add_argument("--pass-images", type=int, default=256, help="0: no side-by-side pass")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-photo-folder")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    base = None
    if a.base:
        base = a.out / "base-tree"
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT,
                       capture_output=True)  # fmt: skip
        subprocess.run(["git", "worktree", "add", "--detach", str(base), a.base], cwd=ROOT,
                       check=True, capture_output=True)  # fmt: skip
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_before": os.getloadavg(), "rows": []}  # fmt: skip
    sets = [(a.label, a.data, a.held)] + ([("two", *a.two)] if a.two else [])
    for label, data, held in sets:
        if base:
            result["rows"].append(train_row(f"{label}-base", data, held, a.out, "base", str(base)))
        result["rows"].append(train_row(f"{label}-default", data, held, a.out, "tree", ""))
        if label == a.label:
            for v in a.variant:
                name, changes = v.split("=", 1)
                row = train_row(f"{label}-{name}", data, held, a.out, "variant", changes)
                result["rows"].append(row)
    for folder in a.scale:
        result["rows"].append(train_row(f"scale-{folder.name}", folder, None, a.out, "tree", ""))
    if a.pass_images:
        result["feature_pass"] = feature_pass(a.data, a.pass_images)
    result["load_after"] = os.getloadavg()
    print(write_result(f"photo_folder-{a.label}", result))


if __name__ == "__main__":
    main()
