"""Prediction over a saved bundle, with the exact decoding used in training.

A :class:`Predictor` runs the bundle's inference model (``model.keras``: test-time views,
classifier, temperature, all inside) on pixels decoded by the one shared decoder, through an
engine (Keras, or ONNX Runtime on an export cached in the run folder). Asking for another
test-time augmentation or temperature builds that variant of the same graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.bundle import (
    BundleMeta,
    classifier_of,
    inference_model,
    load_model,
    policy_copy,
    read_meta,
)
from imgcls.config import TTA_MODES
from imgcls.data.decode import DecodeError, Source, load_image
from imgcls.engine import BF16_POLICY, KerasEngine, OnnxEngine, cached_onnx, check_engine
from imgcls.errors import check

PREDICT_BATCH = 64  # images per forward pass at most (times the test-time views inside the model)
# ... and at most this many pixels per pass: EfficientNet-Lite0 at 256x256 with flip TTA ran as
# fast in batches of 8, 16 and 32 (18 images/s, 2 cores) and peaked at 1.2, 1.6 and 2.2 GB.
PREDICT_PIXELS = 16 * 224 * 224


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

    Args:
        run_dir: a run folder written by ``imgcls train``.
        model: the bundle's loaded inference model, to reuse.
        meta: the bundle's :class:`~imgcls.bundle.BundleMeta`, to reuse.
        engine: ``"keras"``, ``"keras-bf16"`` (Keras computing in bfloat16: faster where the
            hardware has it, probabilities within a few hundredths) or ``"onnx"`` (ONNX
            Runtime on an export cached in the run); see :mod:`imgcls.engine`.

    Example:
        >>> p = imgcls.load("runs/demo")                      # doctest: +SKIP
        >>> p.predict(["cat.jpg"])[0].label                     # doctest: +SKIP
        'cat'
    """

    def __init__(
        self,
        run_dir: str | Path,
        model=None,
        meta: BundleMeta | None = None,
        engine: str = "keras",
    ):
        self.run_dir = Path(run_dir)
        self.engine = check_engine(engine)
        self.meta = meta or read_meta(run_dir)
        self._model = model
        self.classes_ = list(self.meta.class_names)
        self.image_size = tuple(self.meta.image_size)
        self._runners: dict[tuple[str, float], Any] = {}

    @property
    def model(self):
        """The bundle's inference model (Keras), loaded on first use."""
        if self._model is None:
            self._model = load_model(self.run_dir)
        return self._model

    @property
    def classifier(self):
        """The trained classifier inside the inference model (for Grad-CAM and feature maps)."""
        return classifier_of(self.model)

    @property
    def temperature(self) -> float:
        return self.meta.temperature

    @property
    def tta(self) -> str:
        """The test-time augmentation the run's recipe chose (one of :data:`TTA_MODES`)."""
        return self.meta.tta

    def decode(self, source: Source | np.ndarray) -> np.ndarray:
        """The pixels the model sees for ``source`` (path, bytes, PIL image or array)."""
        if isinstance(source, np.ndarray):
            from PIL import Image

            source = Image.fromarray(np.asarray(source, dtype=np.uint8).squeeze())
        return load_image(source, self.image_size)

    def runner(self, tta: str | bool | None = None, temperature: float | None = None):
        """The engine that predicts with ``tta`` and ``temperature`` (``None``: the bundle's)."""
        key = (resolve_tta(tta, self.tta), self.temperature if temperature is None else temperature)
        if key not in self._runners:
            if self.engine == "onnx":
                self._runners[key] = OnnxEngine(cached_onnx(self.run_dir, *key))
            elif self.engine == "keras-bf16":
                _warn_if_emulated()
                classifier = policy_copy(self.classifier, BF16_POLICY)
                self._runners[key] = KerasEngine(inference_model(classifier, *key))
            elif key == (self.tta, self.temperature) and self.classifier is not self.model:
                self._runners[key] = KerasEngine(self.model)  # the saved inference graph
            else:
                self._runners[key] = KerasEngine(inference_model(self.classifier, *key))
        return self._runners[key]

    def predict_pixels(
        self, pixels: np.ndarray, temperature: float | None = None, tta: str | bool | None = None
    ) -> np.ndarray:
        """Probabilities ``(N, n_classes)`` for decoded uint8 pixels ``(N, H, W, 3)``.

        Args:
            pixels: decoded images.
            temperature: overrides the bundle's calibration temperature (``1.0``: raw probabilities).
            tta: test-time augmentation, one of :data:`TTA_MODES` (``True`` means ``"flip"``,
                ``False`` ``"none"``); ``None`` uses the run's own (``bundle.json``).
        """
        return run_batches(self.runner(tta, temperature), pixels, len(self.classes_))

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
        for row, i in zip(probs, ok, strict=True):
            fill_prediction(results[i], row, self.classes_, top_k)
        return results


def fill_prediction(result: Prediction, probs: np.ndarray, classes: list[str], top_k: int) -> None:
    """Set ``result``'s top-k labels and probabilities from one row of ``probs``."""
    k = max(1, min(top_k, len(classes)))
    best = np.argsort(-probs, kind="stable")[:k]
    result.top_k = [(classes[j], float(probs[j])) for j in best]
    result.label, result.probability = result.top_k[0]


def run_batches(engine, pixels: np.ndarray, n_classes: int, batch: int | None = None) -> np.ndarray:
    """``engine`` over uint8 ``pixels`` in batches of ``batch`` images (default: as many as
    :data:`PREDICT_PIXELS` allows, at most :data:`PREDICT_BATCH`); float64 probabilities."""
    if len(pixels) == 0:
        return np.zeros((0, n_classes), dtype=np.float64)
    if batch is None:
        h, w = pixels.shape[1:3]
        batch = max(1, min(PREDICT_BATCH, PREDICT_PIXELS // (h * w)))
    parts = [
        engine(np.asarray(pixels[i : i + batch], np.float32)) for i in range(0, len(pixels), batch)
    ]
    return np.concatenate(parts)


def resolve_tta(tta: str | bool | None, default: str = "none") -> str:
    """The TTA mode named by ``tta``: ``True`` is ``"flip"``, ``False`` ``"none"``, ``None`` ``default``."""
    mode = default if tta is None else {True: "flip", False: "none"}.get(tta, tta)  # type: ignore[call-overload]
    check(
        mode in TTA_MODES,
        f"`tta` must be one of {TTA_MODES} (or True/False). Received: tta={mode!r}",
    )
    return mode


def load(run_dir: str | Path, engine: str = "keras") -> Predictor:
    """Load a training run for prediction: ``imgcls.load("runs/x").predict(paths)``."""
    return Predictor(run_dir, engine=engine)


class RunProbabilities:
    """Class probabilities of decoded pixels from one or more runs, over class names it is given
    (matched by name, renormalised): what ``imgcls prepare --label-issues --from-run RUN...``
    ranks with.

    With several runs (say two, each trained on one half of the data with ``--split-file``),
    each image is scored by the runs that never trained or validated on it (their
    ``seen_digests.npy``), so the probabilities are out of sample as cleanlab needs; an image
    every run saw is scored by all of them, and :attr:`in_sample` counts those. One run scores
    every image; on its own training images that is optimistic (it learned their labels).

    Example:
        >>> probs = RunProbabilities(["runs/a", "runs/b"])(pixels, ["cat", "dog"])  # doctest: +SKIP
    """

    def __init__(self, runs, batch: int = 1024):
        self.runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
        check(bool(self.runs), "--from-run needs at least one RUN")
        for run in self.runs:
            read_meta(run)  # fails now, in one line, if RUN is not a run
        self.batch, self.in_sample = batch, 0

    def __str__(self) -> str:
        if len(self.runs) == 1:
            return f"run {self.runs[0]}"
        return (
            f"runs {', '.join(map(str, self.runs))} (each image scored by those not trained on it)"
        )

    def __call__(
        self, pixels: np.ndarray, class_names: list[str], paths: list[str] | None = None
    ) -> np.ndarray:
        """Probabilities ``(N, len(class_names))`` of ``pixels``; with ``paths`` (the files of
        the pixels), a run trained at another size scores the files decoded at its own size,
        so it sees what it learned from, and the digests of what it trained on are compared
        with the files decoded at its training size (a 32x32 CIFAR image resized after
        decoding, or decoded at the 256 a 224x224 run predicts at, is not the image it
        trained on: every image looked unseen, and each run's own half was scored in sample)."""
        from imgcls.bundle import seen_in_training

        probs, unseen = [], []
        for run in self.runs:
            predictor = Predictor(run)
            own = self._pixels_for(predictor, predictor.image_size, pixels, paths)
            probs.append(self._of(predictor, own, class_names))
            # digests of the images at the size the run trained at (the files again if needed)
            seen = seen_in_training(run, own, paths) if len(self.runs) > 1 else None
            unseen.append(np.ones(len(pixels), dtype=bool))
            if seen is not None:
                unseen[-1][seen] = False
        if len(self.runs) == 1:
            return probs[0]
        probs, unseen = np.stack(probs), np.stack(unseen)  # (run, image, class), (run, image)
        everywhere = ~unseen.any(axis=0)
        self.in_sample = int(everywhere.sum())
        unseen[:, everywhere] = True  # seen by every run: all of them, as one run would
        weights = unseen / unseen.sum(axis=0, keepdims=True)
        return np.einsum("ri,ric->ic", weights, probs)

    @staticmethod
    def _pixels_for(predictor, size, pixels: np.ndarray, paths: list[str] | None) -> np.ndarray:
        """The images as ``predictor``'s run decodes them at ``size``: the files again
        (through the shared pixel cache) when they are known and the sizes differ."""
        if paths is None or tuple(pixels.shape[1:3]) == tuple(size):
            return pixels
        from imgcls.data.cache import cached_pixels

        decoded = cached_pixels(list(paths), tuple(size))
        check(
            bool(decoded.ok.all()),
            f"--from-run {predictor.run_dir}: {int((~decoded.ok).sum())} image(s) no longer "
            "decode; run prepare again",
        )
        return decoded.pixels

    def _of(self, predictor, pixels: np.ndarray, class_names: list[str]) -> np.ndarray:
        from imgcls.data.decode import resize_array

        missing = sorted(set(class_names) - set(predictor.classes_))
        check(
            not missing,
            f"--from-run {predictor.run_dir} does not know class(es) {', '.join(missing)}; "
            f"its classes are {', '.join(predictor.classes_)}",
        )
        columns = [predictor.classes_.index(name) for name in class_names]
        probs = np.zeros((len(pixels), len(class_names)))
        for start in range(0, len(pixels), self.batch):
            batch = np.asarray(pixels[start : start + self.batch])
            if batch.shape[1:3] != predictor.image_size:
                batch = resize_array(batch, predictor.image_size)
            probs[start : start + len(batch)] = predictor.predict_pixels(batch)[:, columns]
        return probs / probs.sum(axis=1, keepdims=True)


def _warn_if_emulated() -> None:
    from imgcls.backend import native_bf16

    if not native_bf16():
        warnings.warn(
            "engine keras-bf16: this machine has no bfloat16 arithmetic for this backend (a CPU "
            "with AMX or avx512_bf16 under TensorFlow or PyTorch, or a GPU of compute "
            "capability 8.0+); it is emulated, slower than engine keras",
            stacklevel=3,
        )


def _as_list(inputs: Any) -> list:
    if isinstance(inputs, (str, Path, bytes)) or (
        isinstance(inputs, np.ndarray) and inputs.ndim <= 3
    ):
        return [inputs]
    from PIL import Image

    if isinstance(inputs, Image.Image):
        return [inputs]
    return list(inputs)
