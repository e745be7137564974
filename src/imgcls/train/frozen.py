"""The frozen part of a network (a pretrained backbone, or its bottom blocks), run where it is
fastest on this machine.

On a CPU that is ONNX Runtime: EfficientNet-Lite0 at 224x224 ran 172-179 images/s there
against 94 in Keras (TensorFlow, float32, batch 32, 2 cores; docs/BENCHMARKS.md), and its
static int8 quantization (calibrated on the user's own images) 1.8x faster again, with held-out
accuracy within noise of float's (docs/BENCHMARKS.md, "A folder of photos"). The part is
exported once per set of weights and input size into ``$IMGCLS_CACHE/frozen/`` (a few seconds;
the ImageNet weights give the same file every run), and quantized once per calibration set.
With a GPU, or without ONNX Runtime, Keras runs it in float32.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imgcls import backend
from imgcls.engine import OnnxEngine, keras_export, quantize_onnx
from imgcls.io import atomic_path, cache_root

CALIBRATION_IMAGES = 32  # ONNX Runtime's calibrator holds every activation of these: ~1 GB


def frozen_runner(
    model, engine: str = "auto", calibration: np.ndarray | None = None
) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """``(run, name)``: ``run(pixels) -> float32 outputs`` of the Keras ``model`` (inference
    mode), and which engine runs it.

    Args:
        model: a Keras model whose weights do not change while ``run`` is used.
        engine: ``auto`` (ONNX Runtime on a CPU when installed, int8 when ``calibration`` is
            given; else Keras), ``onnx``, ``onnx-int8`` or ``keras``.
        calibration: uint8 images whose activation ranges calibrate the int8 model (the first
            :data:`CALIBRATION_IMAGES` are used).
    """
    if engine == "auto":
        onnx = importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("tf2onnx")
        engine = "onnx" if onnx and backend.gpu_capability() is None else "keras"
        if engine == "onnx" and calibration is not None and len(calibration):
            engine = "onnx-int8"
    if engine == "keras":
        return (
            lambda x: np.asarray(model.predict_on_batch(np.asarray(x, np.float32)), np.float32)
        ), "keras"
    path = exported(model)
    if engine == "onnx-int8":
        path = quantized(path, np.asarray(calibration[:CALIBRATION_IMAGES]))
    return OnnxEngine(path).raw, engine


def weights_digest(model) -> str:
    """SHA-256 over a model's input shape and every weight: what its export depends on."""
    h = hashlib.sha256(repr((model.input_shape, model.output_shape)).encode())
    for w in model.weights:
        h.update(np.ascontiguousarray(np.asarray(w.numpy())).tobytes())
    return h.hexdigest()[:32]


def quantized(path: Path, calibration: np.ndarray) -> Path:
    """ONNX Runtime's static int8 quantization of ``path``, calibrated on ``calibration``
    (cached beside it under the digest of the calibration images)."""
    digest = hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest()[:16]
    out = path.with_name(f"{path.stem}-int8-{digest}.onnx")
    if not out.is_file():
        with atomic_path(out) as tmp:
            quantize_onnx(path, tmp, calibration)
    return out


def exported(model) -> Path:
    """``model`` as ONNX in the cache, exported on first use (renamed into place whole)."""
    path = cache_root() / "frozen" / f"{weights_digest(model)}.onnx"
    if not path.is_file():
        with atomic_path(path) as tmp:
            keras_export(model, tmp, "onnx")
    return path
