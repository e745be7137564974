"""What every exported-model client shares: read imgcls.json, decode like imgcls, print JSON.

Only Pillow and NumPy: the decode below is the one imgcls.json describes (EXIF orientation,
RGB with alpha composited on white, 16-bit scaled, bilinear resize to the model's size, no
crop), so a client reproduces `imgcls predict` to float rounding.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def decode(path: str, height: int, width: int) -> np.ndarray:
    """float32 (height, width, 3) pixels in 0..255, as imgcls decodes them."""
    img = Image.open(path)
    img.load()
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr * 255.0 / peak, 0, 255).round().astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode == "P" and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = img.convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def main(run: Callable[[Path, dict, np.ndarray], np.ndarray]) -> None:
    """``python CLIENT.py EXPORT_DIR IMAGE...``: ``run(folder, spec, pixels)`` returns the
    probabilities; prints what ``imgcls predict --format json --top-k 3`` prints."""
    if len(sys.argv) < 3:
        sys.exit(f"usage: python {Path(sys.argv[0]).name} EXPORT_DIR IMAGE...")
    folder = Path(sys.argv[1])
    spec = json.loads((folder / "imgcls.json").read_text())
    _, height, width, _ = spec["input"]["shape"]
    pixels = np.stack([decode(p, height, width) for p in sys.argv[2:]])
    probs = run(folder, spec, pixels)
    classes = spec["class_names"]
    out = []
    for path, row in zip(sys.argv[2:], probs, strict=True):
        best = np.argsort(-row, kind="stable")[:3]
        top = [{"label": classes[j], "probability": float(row[j])} for j in best]
        out.append({"path": path, "label": top[0]["label"], "probability": top[0]["probability"],
                    "top_k": top})  # fmt: skip
    print(json.dumps(out, indent=2))
