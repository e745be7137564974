"""Batch prediction into Parquet: one process vs local processes vs Ray Data on local workers.

Writes ``--images`` random 32x32 PNGs once (under ``--data``), trains `fast` for one epoch on a
small synthetic set (speed does not depend on the weights), then times, through the CLI and
process start included, ``imgcls predict RUN DATA --out OUT.parquet`` with ``--workers 1``,
``--workers 2`` and ``--ray --workers 2``. Each run starts from an empty output.

    python bench/batch_predict.py --images 100000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import IMGCLS, ROOT, timed, write_result

sys.path.insert(0, str(ROOT))

PER_FOLDER = 1000  # files per folder, so no folder holds 100,000 entries


def write_images(folder: Path, n: int) -> None:
    from PIL import Image

    if folder.is_dir() and sum(1 for _ in folder.rglob("*.png")) == n:
        return
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            sub.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(sub / f"{i}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--data", type=Path, default=Path("/tmp/imgcls-bench-batch"))
    p.add_argument("--ways", nargs="+", type=int, default=[0, 1, 2], help="rows to run: 0 1 2")
    a = p.parse_args()
    from engines import make_run

    t0 = time.perf_counter()
    write_images(a.data / "images", a.images)
    print(f"images ready in {time.perf_counter() - t0:.0f} s", flush=True)
    base = Path(tempfile.mkdtemp(prefix="imgcls-bench-batch-run-"))
    run = make_run("fast", base)
    rows = []
    ways = [
        ("one process", ["--workers", "1"]),
        ("2 local processes", ["--workers", "2"]),
        ("Ray Data, 2 local workers", ["--ray", "--workers", "2"]),
    ]
    for name, flags in [ways[i] for i in a.ways]:
        out = base / "out.parquet"
        shutil.rmtree(base / "out.parquet.parts", ignore_errors=True)
        out.unlink(missing_ok=True)
        wall, _ = timed(
            [*IMGCLS, "predict", str(run), str(a.data / "images"), "--out", str(out), *flags]
        )
        rows.append({"way": name, "images": a.images, "wall_s": round(wall, 1),
                     "images_per_s": round(a.images / wall)})  # fmt: skip
        print(rows[-1], flush=True)
    base_rate = rows[0]["images_per_s"]
    print(f"\n{'way':<28} {'wall s':>8} {'images/s':>9} {'vs one':>7}")
    for r in rows:
        print(
            f"{r['way']:<28} {r['wall_s']:>8.1f} {r['images_per_s']:>9,} {r['images_per_s'] / base_rate:>6.2f}x"
        )
    shutil.rmtree(base, ignore_errors=True)
    record = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "rows": rows}
    print(f"results: {write_result('batch_predict', record)}")


if __name__ == "__main__":
    main()
