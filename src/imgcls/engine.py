"""What runs an inference model: Keras (on its backend) or ONNX Runtime, and the ONNX export
both :mod:`imgcls.predict` and :mod:`imgcls.export` make of it.

An engine is a callable from float32 pixels ``(N, H, W, 3)`` in 0..255 to float64 class
probabilities ``(N, K)``. ``keras`` and ``onnx`` run the same float32 inference graph (the
bundle's ``model.keras``, or its ONNX export), so they agree to float rounding (1e-4); ONNX
Runtime answers one image 4x sooner on a CPU. ``keras-bf16`` runs that graph with the
classifier's layers computing in bfloat16 (its probabilities layer in float32): 2.4-3x the
images/s of ``keras`` for ``fast``, 1.6-1.8x for ``classic``, where the hardware has bfloat16
arithmetic (AMX or avx512_bf16 CPUs under TensorFlow or PyTorch, Ampere and newer GPUs);
elsewhere it is emulated and slower, and so are depthwise convolutions even on AMX
(EfficientNet-Lite0: 0.75x; ONNX Runtime is the fast engine there, 2x). On 10,000 CIFAR-10
test images its accuracy equalled float32's (0.829-0.830 in two runs), its top class agreed on
99.1-99.2% of images, probabilities moved by 0.03 at the 99th percentile, 0.07 at most
(bench/engine_accuracy.py). It is opt-in: the default engines give the same numbers as every
export.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from imgcls.bundle import RunFolder, classifier_of, float32_copy, inference_model, load_model
from imgcls.errors import ImgclsError, check, require
from imgcls.io import TMP_PREFIX

ENGINES = ("keras", "keras-bf16", "onnx")
BF16_POLICY = "mixed_bfloat16"  # the Keras dtype policy of the keras-bf16 engine


def check_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`ENGINES`, else :class:`~imgcls.errors.ImgclsError`."""
    check(engine in ENGINES, f"`engine` must be one of {set(ENGINES)}. Received: engine={engine!r}")
    return engine


class KerasEngine:
    """A Keras model's compiled predict step (one trace per batch shape); ``keras-bf16`` is
    this engine on a bfloat16 copy of the model (:func:`imgcls.bundle.policy_copy`).

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
        require("onnxruntime", why="`engine` onnx", extra="onnx")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.raw(x), np.float64)

    def raw(self, x: np.ndarray) -> np.ndarray:
        """The graph's first output as ONNX Runtime gives it (float32)."""
        return self.session.run(None, {self.input: np.asarray(x, np.float32)})[0]


def cached_onnx(run: str | Path, tta: str, temperature: float) -> Path:
    """An ONNX export of RUN's inference graph with ``tta`` and ``temperature``, made on first
    use and kept in ``RUN/onnx/`` under the hash of ``model.keras`` and those settings."""
    folder = RunFolder(run)
    digest = hashlib.sha256()
    with open(folder.model, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(f"{tta}|{temperature!r}".encode())
    path = folder.onnx_cache / f"{digest.hexdigest()[:16]}.onnx"
    if path.is_file():
        return path
    model = load_model(run)
    graph = inference_model(float32_copy(classifier_of(model)), tta, temperature)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=path.parent))
    try:
        keras_export(graph, staging / "model.onnx", "onnx")
        os.replace(staging / "model.onnx", path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def keras_export(model, path: Path, keras_format: str) -> None:
    """``model.export`` with Keras' and the converters' chatter silenced."""
    model(np.zeros((1, *model.input_shape[1:]), np.float32))  # ONNX export wants a called model
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx on NumPy 2's np.object
            model.export(str(path), format=keras_format, verbose=False)
    except ImportError as e:
        raise ImgclsError(
            f"exporting to {keras_format} needs a converter that is not installed ({e}): "
            "pip install 'imgcls[export]'"
        ) from None
    except ValueError as e:  # Keras: this format is not available on this backend
        raise ImgclsError(f"cannot export to {keras_format}: {' '.join(str(e).split())}") from None


def quantize_onnx(src: Path, dst: Path, pixels: np.ndarray, batch: int = 32) -> None:
    """ONNX Runtime's static quantization of ``src`` into ``dst`` (QDQ format: the input and
    output stay float32, so clients are unchanged), ranges calibrated on ``pixels``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dst.with_name(f"prepared-{dst.name}")  # an intermediate, deleted when done
    try:
        # ONNX's own shape inference: the symbolic one needs sympy, which a default install lacks
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        feeds = iter(
            {name: pixels[i : i + batch].astype(np.float32)} for i in range(0, len(pixels), batch)
        )

        class Feeds(CalibrationDataReader):
            def get_next(self):
                return next(feeds, None)

        quantize_static(
            str(prepared), str(dst), Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)
