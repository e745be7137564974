"""The frozen part of a network (a pretrained backbone, or its bottom blocks), run where it is
fastest on this machine.

On a CPU that is ONNX Runtime: EfficientNet-Lite0 at 224x224 ran 172-179 images/s there
against 94 in Keras (TensorFlow, float32, batch 32, 2 cores; docs/BENCHMARKS.md). The part is
exported once per set of weights and input size into ``$IMGCLS_CACHE/frozen/`` (a few seconds;
the ImageNet weights give the same file every run). With a GPU, or without ONNX Runtime,
Keras runs it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imgcls import backend
from imgcls.engine import OnnxEngine, keras_export
from imgcls.io import TMP_PREFIX, cache_root


def frozen_runner(model, engine: str = "auto") -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """``(run, name)``: ``run(pixels) -> float32 outputs`` of the Keras ``model`` (inference
    mode), and which engine runs it.

    Args:
        model: a Keras model whose weights do not change while ``run`` is used.
        engine: ``auto`` (ONNX Runtime on a CPU when installed, else Keras), ``onnx`` or
            ``keras``.
    """
    if engine == "auto":
        onnx = importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("tf2onnx")
        engine = "onnx" if onnx and backend.gpu_capability() is None else "keras"
    if engine == "keras":
        return (
            lambda x: np.asarray(model.predict_on_batch(np.asarray(x, np.float32)), np.float32)
        ), "keras"
    return OnnxEngine(exported(model)).raw, "onnx"


def weights_digest(model) -> str:
    """SHA-256 over a model's input shape and every weight: what its export depends on."""
    h = hashlib.sha256(repr((model.input_shape, model.output_shape)).encode())
    for w in model.weights:
        h.update(np.ascontiguousarray(np.asarray(w.numpy())).tobytes())
    return h.hexdigest()[:32]


def exported(model) -> Path:
    """``model`` as ONNX in the cache, exported on first use (renamed into place whole)."""
    path = cache_root() / "frozen" / f"{weights_digest(model)}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        keras_export(model, tmp, "onnx")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
