"""Prediction over a saved bundle, with the exact decoding used in training."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.bundle import BundleMeta, load_model, read_meta
from imgcls.config import TTA_MODES
from imgcls.data.decode import DecodeError, Source, load_image
from imgcls.errors import check

PREDICT_BATCH = 64  # images per forward pass
TTA_CHUNK = 2048  # images whose views are built and predicted together (bounds memory)


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

    @property
    def tta(self) -> str:
        """The test-time augmentation the run's recipe chose (one of :data:`TTA_MODES`)."""
        return self.meta.tta

    def predict_pixels(
        self, pixels: np.ndarray, temperature: float | None = None, tta: str | bool | None = None
    ) -> np.ndarray:
        """Probabilities ``(N, n_classes)`` for decoded uint8 pixels ``(N, H, W, 3)``.

        Args:
            pixels: decoded images.
            temperature: overrides the bundle's calibration temperature (``1.0``: raw probabilities).
            tta: test-time augmentation, one of :data:`TTA_MODES` (``True`` means ``"flip"``,
                ``False`` ``"none"``); ``None`` uses the run's own (``bundle.json``). The views'
                log-probabilities are averaged before the temperature is applied.
        """
        return predict_probs(
            self.model,
            pixels,
            resolve_tta(tta, self.tta),
            self.temperature if temperature is None else temperature,
        )

    def predict_proba(self, inputs: Sequence[Source | np.ndarray]) -> np.ndarray:
        """Probabilities for paths, bytes, PIL images or arrays; a bad file raises ``DecodeError``."""
        return self.predict_pixels(np.stack([self.decode(s) for s in _as_list(inputs)]))

    def predict(
        self, inputs: Source | np.ndarray | Iterable, top_k: int = 5, tta: str | None = None
    ) -> list[Prediction]:
        """Top-k labels per input; a file that cannot be decoded gets ``error`` instead.

        ``tta`` overrides the run's test-time augmentation (see :meth:`predict_pixels`).
        """
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
            self.predict_pixels(np.stack(pixels), tta=tta)
            if pixels
            else np.zeros((0, len(self.classes_)))
        )
        k = max(1, min(top_k, len(self.classes_)))
        for row, i in zip(probs, ok, strict=True):
            best = np.argsort(-row, kind="stable")[:k]
            results[i].top_k = [(self.classes_[j], float(row[j])) for j in best]
            results[i].label, results[i].probability = results[i].top_k[0]
        return results


def resolve_tta(tta: str | bool | None, default: str = "none") -> str:
    """The TTA mode named by ``tta``: ``True`` is ``"flip"``, ``False`` ``"none"``, ``None`` ``default``."""
    mode = default if tta is None else {True: "flip", False: "none"}.get(tta, tta)  # type: ignore[call-overload]
    check(
        mode in TTA_MODES,
        f"`tta` must be one of {TTA_MODES} (or True/False). Received: tta={mode!r}",
    )
    return mode


def tta_views(pixels: np.ndarray, mode: str | bool) -> list[tuple[float, np.ndarray]]:
    """``(weight, images)`` pairs whose weighted log-probabilities make the TTA prediction.

    ``"flip"``: the image and its mirror, equal weights. ``"translate"``: half the weight on
    the image, a quarter on each of its copies shifted one pixel down-right and up-left
    (reflect-padded), which recovers a little of what random-crop training spread out.
    ``"flip_translate"`` (airbench): both, each view with its mirror.
    """
    mode = resolve_tta(mode)
    x = np.asarray(pixels, np.float32)
    views = [(1.0, x)]
    if "translate" in mode:
        h, w = x.shape[1:3]
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        views = [(0.5, x), (0.25, padded[:, :h, :w]), (0.25, padded[:, 2 : h + 2, 2 : w + 2])]
    if "flip" in mode:
        views = [(wt / 2, v) for wt, img in views for v in (img, img[:, :, ::-1])]
    return views


def predict_probs(
    model,
    pixels: np.ndarray,
    tta: str | bool = "none",
    temperature: float = 1.0,
    batch_size: int = PREDICT_BATCH,
) -> np.ndarray:
    """Class probabilities of a Keras ``model`` for uint8 ``pixels``, with ``tta`` views, then
    ``temperature``; the one forward path shared by training's test score, evaluate and predict."""
    n_classes = int(model.outputs[0].shape[-1])
    if len(pixels) == 0:
        return np.zeros((0, n_classes), dtype=np.float64)
    if len(pixels) > TTA_CHUNK:  # float32 copies of every view of every image would not fit
        parts = [
            predict_probs(model, pixels[i : i + TTA_CHUNK], tta, 1.0, batch_size)
            for i in range(0, len(pixels), TTA_CHUNK)
        ]
        return apply_temperature(np.concatenate(parts), temperature)
    views = tta_views(pixels, tta)
    if len(views) == 1:
        probs = np.asarray(model.predict(views[0][1], batch_size=batch_size, verbose=0), np.float64)
        return apply_temperature(probs, temperature)
    out = np.asarray(
        model.predict(np.concatenate([v for _, v in views]), batch_size=batch_size, verbose=0),
        np.float64,
    ).reshape(len(views), len(pixels), n_classes)
    log_p = sum(wt * np.log(np.clip(p, 1e-12, 1.0)) for (wt, _), p in zip(views, out, strict=True))
    log_p -= log_p.max(axis=1, keepdims=True)
    probs = np.exp(log_p)
    return apply_temperature(probs / probs.sum(axis=1, keepdims=True), temperature)


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
