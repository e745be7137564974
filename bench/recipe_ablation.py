"""A lever of `fast`'s recipe measured over several seeds, not one run.

One run cannot rank a lever worth less than about half a point: two bundles of the default
recipe scored on the same 5,000 held-out CIFAR-10 images disagree on ~7% of them, so the
difference of their accuracies has a standard error of ~0.34 points before the seed's own
spread is counted (docs/BENCHMARKS.md). Here each variant trains once per seed through the
real ``imgcls train`` on the same 45,000 / 5,000 split as ``cifar10_time_to_accuracy.py`` and
``gpu_check.py`` (the seed changes the validation carve, the initialisation, the order and the
augmentation), and each variant is compared with the first **paired by seed**: the mean of the per-seed
differences and its standard error.

A variant is ``NAME JSON``; the JSON may hold ``"recipe"`` (fields of `fast`'s
:class:`~imgcls.models.recipe.Recipe` to change) and ``"flags"`` (more ``imgcls train``
flags). A child process registers `fast` with the changed recipe, then runs the CLI::

    python bench/recipe_ablation.py --seeds 0 1 2 \\
        --variant default '{}' \\
        --variant gelu '{"flags": ["--model-arg", "activation=gelu"]}' \\
        --variant momentum85 '{"recipe": {"momentum": 0.85, "lr": 0.6}}'

On a CPU one run of the default recipe takes 13 minutes (2 cores with avx512_bf16) to 62
(AVX2 only, float32), so this is a benchmark for a GPU: ``--backend jax`` there trains a run in
well under a minute (``--data`` names the CIFAR-10 folder there). Nothing else should run
meanwhile if the minutes are to be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

from _common import ROOT, write_cifar_split, write_result

from imgcls.models.recipe import Recipe

RECIPE_FIELDS = {f.name for f in fields(Recipe)}


def child(variant: str, argv: list[str]) -> int:
    """Register `fast` with the variant's recipe fields, then run ``imgcls`` with ``argv``."""
    import dataclasses

    from imgcls import models
    from imgcls.cli import main

    fields = json.loads(variant).get("recipe", {})
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    spec = models.get_spec("fast")
    recipe = dataclasses.replace(spec.recipe, **fields)
    models._REGISTRY["fast"] = dataclasses.replace(spec, recipe=recipe)
    return main(argv)


def train(manifest: Path, out: Path, cache: Path, variant: dict, seed: int, backend: str) -> dict:
    """One ``imgcls train`` of ``variant`` with ``seed``: held-out accuracy, wall time, timeline."""
    env = dict(os.environ, IMGCLS_CACHE=str(cache), KERAS_BACKEND=backend,
               TF_CPP_MIN_LOG_LEVEL="3")  # fmt: skip
    cmd = [sys.executable, __file__, "--child", json.dumps(variant), "train", str(manifest),
           "--out", str(out), "--seed", str(seed), "--quiet", *variant.get("flags", [])]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"imgcls train failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    meta = json.loads((out / "bundle.json").read_text())
    timeline = json.loads((out / "run.json").read_text()).get("timeline", {})
    return {"seed": seed, "held_out_accuracy": meta["metrics"]["test_accuracy"],
            "wall_s": round(wall, 1), "timeline": timeline}  # fmt: skip


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Each variant's mean and spread, and its per-seed difference from the first variant."""
    base_name = next(iter(runs))
    base = {r["seed"]: r["held_out_accuracy"] for r in runs[base_name]}
    table = {}
    for name, rows in runs.items():
        accs = [r["held_out_accuracy"] for r in rows]
        row = {"mean": statistics.fmean(accs), "runs": accs,
               "std": statistics.stdev(accs) if len(accs) > 1 else None}  # fmt: skip
        diffs = [r["held_out_accuracy"] - base[r["seed"]] for r in rows if r["seed"] in base]
        if name != base_name and diffs:
            row["diff_vs_" + base_name] = statistics.fmean(diffs)
            row["diff_se"] = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
        table[name] = row
    return table


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], sys.argv[3:]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True,
                   help="a name and a JSON object; the first variant is the baseline")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared/datasets/cifar10/train")
    p.add_argument("--train-per-class", type=int, help="fewer training images (a quick check)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recipe_ablation")
    a = p.parse_args()
    if not a.data.is_dir():
        sys.exit(f"skipped: CIFAR-10 folder {a.data} not found")
    variants = {}
    for name, text in a.variant:
        try:
            variants[name] = json.loads(text)
        except json.JSONDecodeError as e:
            sys.exit(f"--variant {name}: JSON expected ({e}). Received: {text!r}")
        v = variants[name]
        if not isinstance(v, dict) or set(v) - {"recipe", "flags"}:
            sys.exit(f'--variant {name}: an object with "recipe" and/or "flags" expected. '
                     f"Received: {text}")  # fmt: skip
        unknown = sorted(set(v.get("recipe", {})) - RECIPE_FIELDS)
        if unknown:
            sys.exit(f"--variant {name}: {unknown} are not recipe fields; a recipe takes "
                     f"{sorted(RECIPE_FIELDS)}")  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    manifest = write_cifar_split(a.data, a.out, train_per_class=a.train_per_class)
    record = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "backend": a.backend,
              "load_before": os.getloadavg(), "variants": variants, "runs": {},
              "manifest": manifest.name}  # fmt: skip
    for seed in a.seeds:  # seed-major: a stopped benchmark has its variants paired by seed
        for name, variant in variants.items():
            out = a.out / f"{name}_seed{seed}"
            shutil.rmtree(out, ignore_errors=True)  # a run of an earlier benchmark
            run = train(manifest, out, a.out / "cache", variant, seed, a.backend)
            record["runs"].setdefault(name, []).append(run)
            print(f"{name} seed {seed}: {run['held_out_accuracy']:.4f}", flush=True)
            record["load_after"] = os.getloadavg()
            record["summary"] = summarise(record["runs"])
            # after each run, so a benchmark stopped (or out of device time) keeps its runs
            path = write_result("recipe_ablation", record, a.out)
    for name, row in record["summary"].items():
        print(name, json.dumps(row), flush=True)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
