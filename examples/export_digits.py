"""Write a few of scikit-learn's digits as PNG files, to try `imgcls predict` on real files.

Usage: python examples/export_digits.py OUT_DIR [N]
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main() -> None:
    out = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    out.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    for i in range(n):
        pixels = np.round(digits.images[-1 - i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, "L").resize((32, 32), Image.Resampling.NEAREST).save(
            out / f"digit_{digits.target[-1 - i]}_{i}.png"
        )
    print(f"wrote {n} images to {out}")


if __name__ == "__main__":
    main()
