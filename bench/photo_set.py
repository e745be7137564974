"""A photo-like data set built from CIFAR-10: two classes upscaled to varied photo sizes.

Real phone photos are what users bring: a few hundred per class, 300-4000 pixels a side,
mixed aspect ratios, often already in ``train/`` and ``val/``. CIFAR-10's 32x32 images are
upscaled (bicubic) to a random size between ``--min-side`` and ``--max-side`` on the longer
side with a random aspect ratio, saved as JPEG, and laid out as ``train/<class>/`` and
``val/<class>/`` with no ``test/`` folder, the way such a folder usually arrives.

    python bench/photo_set.py --classes cat dog --per-class 200 --out /tmp/photos
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CIFAR  # noqa: E402

ASPECTS = (4 / 3, 3 / 4, 1.0, 16 / 9, 3 / 2)  # width / height of common camera and phone shots
VAL_SHARE = 0.2  # of each class, into val/ (the rest into train/)
JPEG_QUALITY = 90


def build(
    classes: list[str],
    per_class: int,
    out: Path,
    seed: int,
    sides: tuple[int, int],
    exclude: set[Path] = frozenset(),
    flat: bool = False,
) -> set[Path]:
    """Write the set (``flat``: ``out/<class>/`` with no train/val folders), drawing no source
    image in ``exclude``; return the source files used. The same arguments give the same files."""
    rng = np.random.default_rng(seed)
    if out.exists():
        shutil.rmtree(out)
    used = set()
    for name in classes:
        files = [f for f in sorted((CIFAR / name).glob("*.jpg")) if f not in exclude]
        chosen = rng.choice(len(files), per_class, replace=False)
        n_val = 0 if flat else int(round(per_class * VAL_SHARE))
        for k, i in enumerate(chosen):
            used.add(files[i])
            split = "val" if k < n_val else "train"
            longer = int(rng.integers(sides[0], sides[1] + 1))
            aspect = ASPECTS[rng.integers(len(ASPECTS))]
            w, h = (longer, int(longer / aspect)) if aspect >= 1 else (int(longer * aspect), longer)
            img = Image.open(files[i]).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
            folder = out / name if flat else out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{name}_{k:04d}.jpg", quality=JPEG_QUALITY)
    return used


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", nargs="+", default=["cat", "dog"])
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("/tmp/imgcls-photos"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-side", type=int, default=300)
    p.add_argument("--max-side", type=int, default=640)
    a = p.parse_args()
    build(a.classes, a.per_class, a.out, a.seed, (a.min_side, a.max_side))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
