"""Prediction over a saved bundle, with the exact decoding used in training."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.bundle import BundleMeta, load_model, read_meta
from imgcls.data.decode import DecodeError, Source, load_image

PREDICT_BATCH = 64  # images per forward pass


@dataclass
class Prediction:
    """One image's result. ``error`` is set (and the rest empty) when it could not be read."""

    source: str
    label: str | None = None
    probability: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "path": self.source,
            "label": self.label,
            "probability": self.probability,
            "top_k": [{"label": label, "probability": p} for label, p in self.top_k],
        }
        if self.error:
            d["error"] = self.error
        return d


class Predictor:
    """Class probabilities for images, from a training run's bundle.

    Example:
        >>> p = imgcls.load("runs/demo")                      # doctest: +SKIP
        >>> p.predict(["cat.jpg"])[0].label                     # doctest: +SKIP
        'cat'
    """

    def __init__(self, run_dir: str | Path, model=None, meta: BundleMeta | None = None):
        self.run_dir = Path(run_dir)
        self.meta = meta or read_meta(run_dir)
        self.model = model if model is not None else load_model(run_dir)
        self.classes_ = list(self.meta.class_names)
        self.image_size = tuple(self.meta.image_size)

    @property
    def temperature(self) -> float:
        return self.meta.temperature

    def decode(self, source: Source | np.ndarray) -> np.ndarray:
        """The pixels the model sees for ``source`` (path, bytes, PIL image or array)."""
        if isinstance(source, np.ndarray):
            from PIL import Image

            source = Image.fromarray(np.asarray(source, dtype=np.uint8).squeeze())
        return load_image(source, self.image_size)

    def predict_pixels(
        self, pixels: np.ndarray, temperature: float | None = None, tta: bool = False
    ) -> np.ndarray:
        """Probabilities ``(N, n_classes)`` for decoded uint8 pixels ``(N, H, W, 3)``.

        Args:
            pixels: decoded images.
            temperature: overrides the bundle's calibration temperature (``1.0``: raw probabilities).
            tta: average the probabilities of each image and its horizontal mirror (one
                forward pass over both), before the temperature is applied.
        """
        if len(pixels) == 0:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        x = np.asarray(pixels, np.float32)
        if tta:
            x = np.concatenate([x, x[:, :, ::-1]])
        probs = np.asarray(
            self.model.predict(x, batch_size=PREDICT_BATCH, verbose=0), dtype=np.float64
        )
        if tta:
            probs = (probs[: len(pixels)] + probs[len(pixels) :]) / 2
        return apply_temperature(probs, self.temperature if temperature is None else temperature)

    def predict_proba(self, inputs: Sequence[Source | np.ndarray]) -> np.ndarray:
        """Probabilities for paths, bytes, PIL images or arrays; a bad file raises ``DecodeError``."""
        return self.predict_pixels(np.stack([self.decode(s) for s in _as_list(inputs)]))

    def predict(self, inputs: Source | np.ndarray | Iterable, top_k: int = 5) -> list[Prediction]:
        """Top-k labels per input; a file that cannot be decoded gets ``error`` instead."""
        items = _as_list(inputs)
        pixels, ok, results = [], [], []
        for item in items:
            name = str(item) if isinstance(item, (str, Path)) else f"<{type(item).__name__}>"
            results.append(Prediction(name))
            try:
                pixels.append(self.decode(item))
                ok.append(len(results) - 1)
            except DecodeError as e:
                results[-1].error = f"{e.kind}: {e.detail}"
        probs = (
            self.predict_pixels(np.stack(pixels)) if pixels else np.zeros((0, len(self.classes_)))
        )
        k = max(1, min(top_k, len(self.classes_)))
        for row, i in zip(probs, ok, strict=True):
            best = np.argsort(-row, kind="stable")[:k]
            results[i].top_k = [(self.classes_[j], float(row[j])) for j in best]
            results[i].label, results[i].probability = results[i].top_k[0]
        return results


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities as softmax(log(p) / T); ``T = 1`` leaves them unchanged."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def load(run_dir: str | Path) -> Predictor:
    """Load a training run for prediction: ``imgcls.load("runs/x").predict(paths)``."""
    return Predictor(run_dir)


def _as_list(inputs: Any) -> list:
    if isinstance(inputs, (str, Path, bytes)) or (
        isinstance(inputs, np.ndarray) and inputs.ndim <= 3
    ):
        return [inputs]
    from PIL import Image

    if isinstance(inputs, Image.Image):
        return [inputs]
    return list(inputs)
