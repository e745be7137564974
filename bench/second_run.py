"""A second run on the same data: seconds from the command to its first step, A/B.

``imgcls train MANIFEST --epochs 1`` on the time-to-accuracy split (45,000 + 5,000 shared
CIFAR-10 JPEGs): once to fill a fresh pixel cache (it decodes), then ``--rounds`` times from
this tree and from ``--baseline-src`` (another commit's ``src``, e.g. a ``git worktree``),
alternating, each reading the warm cache. The first step starts after the timeline's start-up,
data and model stages; their sum is the figure (target: 5 s). Medians per tree and their
ratio; nothing else should run meanwhile (the load is recorded).

    git worktree add /tmp/base <commit>
    python bench/second_run.py --baseline-src /tmp/base/src --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

from _common import CIFAR, ROOT, write_cifar_split, write_result
from cifar10_time_to_accuracy import FIRST_STEP_STAGES, run_imgcls, to_first_step


def run(src: Path, manifest: Path, out: Path, cache: Path) -> dict:
    """One ``imgcls train MANIFEST --epochs 1`` from the sources ``src``: its timeline's stages
    before the first step, and their sum."""
    shutil.rmtree(out, ignore_errors=True)
    result = run_imgcls(manifest, out, cache, "--epochs", "1", src=src)
    timeline = result["timeline"]
    return {"to_first_step_s": to_first_step(timeline),
            **{k: timeline.get(k) for k in FIRST_STEP_STAGES}, "wall_s": result["wall_s"]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline-src", type=Path, required=True, help="another commit's src/")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "second_run")
    a = p.parse_args()
    if not CIFAR.is_dir():
        sys.exit(f"skipped: {CIFAR} not found")
    if not (a.baseline_src / "imgcls" / "__init__.py").is_file():
        sys.exit(f"--baseline-src must hold imgcls/. Received: {a.baseline_src}")
    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    manifest, cache = write_cifar_split(CIFAR, a.out), a.out / "cache"
    trees = {"this tree": ROOT / "src", "baseline": a.baseline_src.resolve()}
    record = {"load_before": os.getloadavg(), "baseline_src": str(trees["baseline"]),
              "fill": run(trees["this tree"], manifest, a.out / "run", cache)}  # fmt: skip
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(a.rounds):
        for name in trees if r % 2 == 0 else reversed(trees):
            runs[name].append(run(trees[name], manifest, a.out / "run", cache))
            print(name, runs[name][-1], flush=True)
    medians = {n: statistics.median(x["to_first_step_s"] for x in runs[n]) for n in trees}
    record.update(runs=runs, median_to_first_step_s=medians, load_after=os.getloadavg(),
                  ratio=round(medians["this tree"] / medians["baseline"], 3))  # fmt: skip
    print("median seconds to the first step:", medians, "ratio", record["ratio"])
    print(f"results: {write_result('second_run', record)}")


if __name__ == "__main__":
    main()
