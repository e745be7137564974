"""Growing the data: do 1,000 labels chosen by `imgcls suggest` beat 1,000 chosen at random?

    python bench/active_learning.py [--start 1000] [--pool 9000] [--add 1000] [--seeds 0 1 2]
    python bench/active_learning.py --data PHOTOS --model efficientnet_lite0 --start 100 \
        --pool 1800 --add 100 --n-test 490 --out active_learning_photos

Per seed: ``start`` labeled images of ``--data`` (a folder per class; the shared CIFAR-10 JPEGs
by default), balanced, a pool of ``pool`` unlabeled ones and ``n-test`` test images, disjoint.
``--model`` (``fast`` by default; its default recipe, ``--test-split 0``) trains on the start
set; ``imgcls suggest`` picks ``add`` images from the pool; the same number is drawn at random.
Each pick gets its true label (as a person labeling would) and ``fast`` retrains on start +
pick; both are scored on the test images with ``imgcls evaluate``. Folders are symbolic links.
Writes bench/results/OUT.json (``--out``, ``active_learning`` by default).
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import platform
import sys
from pathlib import Path

import numpy as np
from _common import (
    CIFAR,
    IMGCLS,
    RESULTS,
    link_images,
    timed,
    train_and_score,
    write_manifest,
    write_result,
)


def split(data: Path, start: int, pool: int, n_test: int, seed: int):
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    everything = [(f, c) for c in classes for f in sorted((data / c).glob("*.jpg"))]
    order = rng.permutation(len(everything))
    labeled = []
    for c in classes:  # balanced start
        labeled += [i for i in order if everything[i][1] == c][: start // len(classes)]
    taken = set(labeled)
    rest = [i for i in order if i not in taken]
    pool_ids, test_ids = rest[:pool], rest[pool : pool + n_test]
    return everything, labeled, pool_ids, test_ids


def link_folder(root: Path, everything: list, ids: list[int], labeled: bool = True) -> None:
    """``root/<class>/`` (or, unlabeled, ``root/``) links to the images ``ids`` of ``everything``."""
    link_images(root, [(i, everything[i][0], everything[i][1] if labeled else None) for i in ids])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start", type=int, default=1000)
    p.add_argument("--pool", type=int, default=9000)
    p.add_argument("--add", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=5000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", type=Path, default=CIFAR, help="a folder of class folders of JPEGs")
    p.add_argument("--model", default="fast")
    p.add_argument("--out", default="active_learning", help="results name (bench/results/)")
    a = p.parse_args()
    if not a.data.is_dir():
        sys.exit(f"skipped: {a.data} not found")
    work = RESULTS / a.out.replace("_", "-")
    score = functools.partial(train_and_score, model=a.model)
    rows = []
    for seed in a.seeds:
        everything, labeled, pool, test = split(a.data, a.start, a.pool, a.n_test, seed)
        test_csv = write_manifest(work / f"test-{seed}.csv", [everything[i] for i in test])
        link_folder(work / "start", everything, labeled)
        row = {"seed": seed}
        row["start"] = score(work / "start", test_csv, work / "run-start", seed)
        link_folder(work / "pool", everything, pool, labeled=False)
        out = work / "suggest.csv"
        timed([*IMGCLS, "suggest", str(work / "run-start"), str(work / "pool"), "--n",
               str(a.add), "--out", str(out)])  # fmt: skip
        with open(out, newline="") as f:
            suggested = [int(Path(r["path"]).stem) for r in csv.DictReader(f)]
        rng = np.random.default_rng(2000 + seed)
        picks = {"suggest": suggested, "random": rng.choice(pool, a.add, replace=False).tolist()}
        for arm, chosen in picks.items():
            link_folder(work / arm, everything, labeled + chosen)
            row[arm] = score(work / arm, test_csv, work / f"run-{arm}", seed)
        row["suggested_classes"] = np.bincount(
            [sorted({c for _, c in everything}).index(everything[i][1]) for i in suggested],
            minlength=len({c for _, c in everything})).tolist()  # fmt: skip
        rows.append(row)
        print(row, flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("start", "suggest", "random")}
    print("mean:", mean, "suggest - random:", round(mean["suggest"] - mean["random"], 4))
    record = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "args": {k: str(v) for k, v in vars(a).items()},
              "rows": rows, "mean": mean}  # fmt: skip
    print(f"results: {write_result(a.out, record)}")


if __name__ == "__main__":
    main()
