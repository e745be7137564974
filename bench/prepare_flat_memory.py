"""Peak memory of ``imgcls prepare`` as the number of images grows: it should stay flat.

    .venv/bin/python bench/prepare_flat_memory.py [--sizes 25000 50000 100000 200000]

Generates distinct tiny 16x16 PNGs once (random pixels, so no duplicates) in a temporary folder,
hard-links the first N of them into a folder per class for each size, and runs the real
command on each, sampling the resident memory of its whole process tree (see
prepare_cifar10.py). Prints a table and writes bench/results/prepare_flat_memory.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result
from prepare_cifar10 import IMGCLS, machine, measure  # noqa: E402

CLASSES = 10
SIDE = 16  # pixels


def generate(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct random PNGs of SIDE x SIDE pixels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(
            buf, format="PNG", compress_level=1
        )
        path = folder / f"{i:06d}.png"
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 50_000, 100_000, 200_000])
    args = parser.parse_args()
    where = machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pool = generate(Path(tmp) / "pool", max(args.sizes))
        print(f"generated {len(pool)} PNGs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for n in sorted(args.sizes):
            data = Path(tmp) / f"data_{n}"
            for k in range(CLASSES):
                (data / f"class{k}").mkdir(parents=True)
            for i, src in enumerate(pool[:n]):
                os.link(src, data / f"class{i % CLASSES}" / src.name)
            out = Path(tmp) / f"out_{n}"
            r = measure(
                [
                    *IMGCLS,
                    "prepare",
                    str(data),
                    "--out",
                    str(out),
                    "--image-size",
                    str(SIDE),
                    str(SIDE),
                    "--quiet",
                ]
            )
            report = json.loads((out / "report.json").read_text())
            rows.append(
                {
                    "n_images": n,
                    "n_usable": report["n_usable"],
                    **{
                        k: r[k]
                        for k in ("wall_s", "peak_tree_rss_mb", "max_process_rss_mb", "returncode")
                    },
                    "cache_mb": round((out / f"cache_{SIDE}x{SIDE}.npy").stat().st_size / 2**20, 1),
                }
            )
            print(
                f"{n:>8} images: {r['wall_s']:.1f} s, peak tree RSS {r['peak_tree_rss_mb']:.0f} MB",
                file=sys.stderr,
            )
            for path in (data, out):
                os.system(f"rm -rf '{path}'")
    print(
        f"{'images':>8} {'usable':>8} {'wall s':>8} {'peak tree RSS MB':>17} {'max process RSS MB':>19} {'cache MB':>9}"
    )
    for r in rows:
        print(
            f"{r['n_images']:>8} {r['n_usable']:>8} {r['wall_s']:>8.1f} {r['peak_tree_rss_mb']:>17.0f} "
            f"{r['max_process_rss_mb']:>19.0f} {r['cache_mb']:>9.0f}"
        )
    print(f"machine: {where}")
    write_result("prepare_flat_memory", {"rows": rows, "image_side": SIDE, "machine": where})
    return 0


if __name__ == "__main__":
    sys.exit(main())
