"""What runs an inference model: Keras (on its backend) or ONNX Runtime.

An engine is a callable from float32 pixels ``(N, H, W, 3)`` in 0..255 to float64 class
probabilities ``(N, K)``. Both run the same inference graph (the bundle's ``model.keras``, or
its ONNX export), so they agree to float rounding; ONNX Runtime is the faster on a CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from imgcls.errors import check

ENGINES = ("keras", "onnx")


def check_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`ENGINES`, else :class:`~imgcls.errors.ImgclsError`."""
    check(engine in ENGINES, f"`engine` must be one of {set(ENGINES)}. Received: engine={engine!r}")
    return engine


class KerasEngine:
    """A Keras model's compiled predict step (one trace per batch shape).

    Example:
        >>> engine = KerasEngine(model)                      # doctest: +SKIP
        >>> engine(np.zeros((2, 32, 32, 3), np.float32)).shape  # doctest: +SKIP
        (2, 10)
    """

    name = "keras"

    def __init__(self, model):
        self.model = model

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(np.asarray(x, np.float32)), np.float64)


class OnnxEngine:
    """An ONNX Runtime session on the CPU, one intra-op thread per core.

    Args:
        path: a ``model.onnx`` written by :func:`imgcls.export.export`.
        threads: intra-op threads (default: the machine's cores).
    """

    name = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            from imgcls.errors import ImgclsError

            raise ImgclsError(
                "`engine` onnx needs ONNX Runtime: pip install 'imgcls[onnx]'"
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input: np.asarray(x, np.float32)})[0]
        return np.asarray(out, np.float64)
