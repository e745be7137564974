"""A run's inference model for other runtimes: ONNX, TensorFlow SavedModel, LiteRT.

:func:`export` writes the bundle's one inference graph (test-time views, classifier,
temperature) with Keras' own ``model.export``, always in float32 and with a dynamic batch
dimension, plus ``imgcls.json``: what a program with only that runtime and Pillow needs to
reproduce ``imgcls predict`` (class names, input layout and range, the exact decode and resize).

    imgcls export runs/pets --format onnx --out pets-onnx

:func:`imgcls.engine.cached_onnx` is the same ONNX export kept in the run folder for
``--engine onnx``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.backend import library_versions
from imgcls.bundle import (
    RunFolder,
    classifier_of,
    float32_copy,
    inference_model,
    load_model,
    read_meta,
)
from imgcls.engine import keras_export, quantize_onnx
from imgcls.errors import ImgclsError, check
from imgcls.io import TMP_PREFIX, write_json

FORMATS = {  # imgcls name -> (Keras export format, file or folder written, runtime to read it)
    "onnx": ("onnx", "model.onnx", "onnxruntime"),
    "savedmodel": ("tf_saved_model", "saved_model", "tensorflow"),
    "litert": ("litert", "model.tflite", "ai-edge-litert"),
}
QUANTIZE = ("int8",)
# Images the int8 calibration sees (the run's training images unless told otherwise): with 256,
# `fast` on CIFAR-10 lost 0.2 points of accuracy and kept 98% of its top classes (BENCHMARKS.md).
CALIBRATION_IMAGES = 256
EXPORT_FORMAT = "imgcls-export"
EXPORT_VERSION = 1


def export(
    run: str | Path,
    format: str,
    out: str | Path,
    tta: bool = True,
    quantize: str | None = None,
    calibration: str | None = None,
) -> Path:
    """Write RUN's inference model to ``out`` in ``format``, with ``out/imgcls.json``.

    Args:
        run: a run folder written by ``imgcls train``.
        format: ``onnx`` (``out/model.onnx``), ``savedmodel`` (``out/saved_model/``, signature
            ``serve``) or ``litert`` (``out/model.tflite``).
        out: the folder to write; files already there of the same names are replaced whole.
        tta: bake the run's test-time augmentation into the graph (``False``: one view, faster).
        quantize: ``"int8"`` (ONNX only): weights int8 per channel, activations uint8, ranges
            calibrated on :data:`CALIBRATION_IMAGES` images; a 4x smaller file and 2.7x the
            images/s of float32 on a CPU with VNNI, but probabilities that differ by up to
            ~0.1 (``imgcls predict`` no longer agrees to 1e-4).
        calibration: the data whose images calibrate ``quantize`` (default: the run's own
            training images, which must still be where the run read them).

    Returns:
        The path of the model file or folder.

    Raises:
        ImgclsError: RUN is not a run, the format is unknown, or its converter is missing.
    """
    check(
        format in FORMATS,
        f"`format` must be one of {set(FORMATS)}. Received: format={format!r}",
    )
    check(
        quantize in (None, *QUANTIZE),
        f"`quantize` must be one of {set(QUANTIZE)}. Received: quantize={quantize!r}",
    )
    check(
        not quantize or format == "onnx",
        f"--quantize {quantize} is for --format onnx (ONNX Runtime's static quantization); "
        f"{format} exports stay float32",
    )
    keras_format, name, _ = FORMATS[format]
    meta = read_meta(run)
    pixels = calibration_images(run, meta, calibration) if quantize else None
    model = load_model(run)
    mode = meta.tta if tta else "none"
    graph = inference_model(float32_copy(classifier_of(model)), mode, meta.temperature)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out))
    try:
        keras_export(graph, staging / name, keras_format)
        if pixels is not None:
            float_file = staging / f"float-{name}"
            os.replace(staging / name, float_file)
            quantize_onnx(float_file, staging / name, pixels)
        quantized = None
        if quantize:
            source = calibration or meta.data.get("source") or meta.data.get("argument")
            quantized = {
                "type": quantize,
                "weights": "int8, per output channel",
                "activations": "uint8",
                "calibration": f"{len(pixels)} images of {source}",
            }
        write_json(staging / "imgcls.json", describe(meta, format, name, mode, quantized))
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staging / name, target)
        os.replace(staging / "imgcls.json", out / "imgcls.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / name


def describe(
    meta, format: str, file: str, tta: str, quantized: dict | None = None
) -> dict[str, Any]:
    """The ``imgcls.json`` of an export: everything a consumer needs besides the runtime."""
    h, w = meta.image_size
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "model_format": format,
        "file": file,
        "class_names": list(meta.class_names),
        "input": {
            "name": "pixels",
            "shape": [None, h, w, 3],
            "dtype": "float32",
            "range": [0, 255],
            "layout": "NHWC, RGB",
        },
        "output": {
            "shape": [None, len(meta.class_names)],
            "dtype": "float32",
            "meaning": "class probabilities in class_names order, test-time views and "
            "temperature already applied",
        },
        "preprocessing": {
            **meta.preprocessing,
            "steps": [
                "PIL.Image.open(file)",
                "PIL.ImageOps.exif_transpose(image)",
                "to RGB: palettes and CMYK converted, alpha composited on white, 16-bit scaled",
                f"image.resize(({w}, {h}), PIL.Image.Resampling.BILINEAR) (no crop, aspect not kept)",
                "numpy.asarray(image, numpy.float32)[None]  # no scaling: it is in the model",
            ],
        },
        "tta": tta,
        "temperature": meta.temperature,
        "quantized": quantized,
        "run": {
            "model": meta.config.get("model"),
            "test_accuracy": meta.metrics.get("test_accuracy"),
        },
        "versions": {**meta.versions, "exported_with": library_versions()},
    }


def calibration_images(run, meta, data: str | None = None) -> np.ndarray:
    """Up to :data:`CALIBRATION_IMAGES` images (uint8, at the run's size), drawn with a fixed
    seed from ``data``, or from the run's training split of its own data."""
    from imgcls.data.pipeline import decode_images
    from imgcls.data.sources import load_source
    from imgcls.data.split import read_split_csv

    source = data or meta.data.get("source") or meta.data.get("argument")
    try:
        images = load_source(source)
    except ImgclsError as e:
        raise ImgclsError(
            f"--quantize calibrates on images: {e} (pass --calibration DATA)"
        ) from None
    if data is None:
        images = images.subset(read_split_csv(RunFolder(run).split, images) == "train")
    check(len(images) > 0, f"--calibration {source}: no images to calibrate on")
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(images), min(CALIBRATION_IMAGES, len(images)), replace=False))
    pixels = decode_images(images.subset(pick), tuple(meta.image_size)).pixels
    check(len(pixels) > 0, f"--calibration {source}: none of its images decoded")
    return pixels
