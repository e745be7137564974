"""The saved-model contract: everything later stages need from a training run.

A run folder holds ``model.keras``, the *inference model*: float32 pixels 0..255 at the run's
size -> the test-time views -> the trained classifier (named ``classifier``, scaling inside)
-> the views' log-probabilities averaged -> divided by the calibration temperature ->
probabilities. It is the whole prediction contract: ``imgcls predict``, ``evaluate``,
``serve`` and every export run this one graph, so they give the same probabilities for the
same decoded pixels. ``bundle.json`` holds class names, image size, how images are decoded,
the resolved config, the data, library versions, and (again, for reading) the TTA mode and
temperature. Evaluation also reads ``seen_digests.npy`` to say whether its data holds images
the run trained on.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.backend import library_versions
from imgcls.errors import ImgclsError, check
from imgcls.io import atomic_path, write_json

BUNDLE_FORMAT = "imgcls-bundle"
BUNDLE_VERSION = 1
MODEL_FILE = "model.keras"
CLASSIFIER = "classifier"  # name of the trained classifier inside the inference model
META_FILE = "bundle.json"
# Digests of the decoded train and validation images, so that evaluation can tell when its
# "new" data holds images the model already saw (a copied folder, a re-exported manifest).
SEEN_FILE = "seen_digests.npy"
SEEN_DHASH_FILE = "seen_dhash.npy"
CHECKPOINT_RE = re.compile(r"^ckpt-(\d{8})\.npz$")  # global step, zero-padded so names sort


@dataclass(frozen=True)
class RunFolder:
    """The files of a run folder: the only place they are named, and where they are read.

    Example:
        >>> RunFolder(Path("runs/pets")).split
        PosixPath('runs/pets/split.csv')
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def model(self) -> Path:
        """``model.keras``: the inference model, the whole prediction contract."""
        return self.path / MODEL_FILE

    @property
    def meta(self) -> Path:
        """``bundle.json``: class names, image size, decoding, config, data, versions."""
        return self.path / META_FILE

    @property
    def seen(self) -> Path:
        return self.path / SEEN_FILE

    @property
    def run(self) -> Path:
        """``run.json``: the resolved config and data identity, written before the first step."""
        return self.path / "run.json"

    @property
    def split(self) -> Path:
        """``split.csv``: id, label and split of every image."""
        return self.path / "split.csv"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, global_step: int) -> Path:
        """The checkpoint written after ``global_step`` steps."""
        return self.checkpoints / f"ckpt-{global_step:08d}.npz"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.npz"

    @property
    def lock(self) -> Path:
        return self.path / ".lock"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def activations(self) -> Path:
        """``activations/``: the frozen bottom's activations a head phase trains on (deleted
        when the run finishes)."""
        return self.path / "activations"

    @property
    def onnx_cache(self) -> Path:
        """``onnx/``: exports made for ``--engine onnx``, one per graph variant."""
        return self.path / "onnx"

    def checkpoint_files(self) -> list[Path]:
        """The step checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.iterdir() if CHECKPOINT_RE.match(p.name))

    def read_meta(self) -> BundleMeta:
        """``bundle.json``; :class:`ImgclsError` if the run is missing, unfinished or damaged."""
        return read_meta(self.path)

    def read_record(self, why: str = "RUN") -> dict[str, Any]:
        """``run.json`` (config and data identity); :class:`ImgclsError`, prefixed with
        ``why``, if this is not a run folder."""
        check(self.run.is_file(), f"{why}: {self.path} is not a run folder (no {self.run.name})")
        try:
            return json.loads(self.run.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ImgclsError(f"{why}: {self.run} is damaged ({e})") from None

    def update_record(self, **fields: Any) -> None:
        """Add ``fields`` to ``run.json`` (rewritten whole, atomically)."""
        write_json(self.run, {**self.read_record(), **fields})

    def read_history(self) -> list[dict[str, float]]:
        """``history.csv``: one row per finished epoch (an empty cell is NaN)."""
        if not self.history.is_file():
            return []
        with open(self.history, newline="", encoding="utf-8") as f:
            return [
                {k: float(v) if v else math.nan for k, v in row.items()}
                for row in csv.DictReader(f)
            ]


@dataclass
class BundleMeta:
    """What travels beside the model weights."""

    class_names: list[str]
    image_size: tuple[int, int]
    preprocessing: dict[str, Any]
    config: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    tta: str = "none"  # test-time augmentation predict and evaluate use by default
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "class_names": list(self.class_names),
            "image_size": list(self.image_size),
            "preprocessing": self.preprocessing,
            "temperature": self.temperature,
            "tta": self.tta,
            "config": self.config,
            "data": self.data,
            "metrics": self.metrics,
            "versions": self.versions or library_versions(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "bundle.json") -> BundleMeta:
        check(
            d.get("format") == BUNDLE_FORMAT,
            f"{where} is not an imgcls bundle (format={d.get('format')!r})",
        )
        check(
            d.get("format_version", 0) <= BUNDLE_VERSION,
            f"{where} has format_version {d.get('format_version')}; this imgcls reads up to {BUNDLE_VERSION}",
        )
        try:
            return cls(
                class_names=list(d["class_names"]),
                image_size=tuple(d["image_size"]),
                preprocessing=d["preprocessing"],
                config=d["config"],
                data=d.get("data", {}),
                temperature=float(d.get("temperature", 1.0)),
                tta=str(d.get("tta", "none")),
                metrics=d.get("metrics", {}),
                versions=d.get("versions", {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ImgclsError(f"{where} is damaged: missing or bad field {e}") from None


def save_bundle(run_dir: str | Path, model, meta: BundleMeta) -> None:
    """Write ``model.keras`` (the inference model of ``model`` with ``meta``'s TTA and
    temperature) then ``bundle.json`` into ``run_dir``, each atomically.

    The classifier is saved in float32 whatever precision it trained in, so every runtime
    computes the same numbers, and without optimizer state (that belongs to the checkpoints
    that resume reads): it loads with plain ``keras.saving.load_model`` after ``import imgcls``.
    """
    run_dir = Path(run_dir)
    save_inference_model(run_dir, float32_copy(classifier_of(model)), meta.tta, meta.temperature)
    write_meta(run_dir, meta)


def save_inference_model(run_dir: str | Path, classifier, tta: str, temperature: float) -> None:
    """Write ``RUN/model.keras``: :func:`inference_model` of ``classifier``, atomically."""
    with atomic_path(RunFolder(run_dir).model) as tmp:
        inference_model(classifier, tta, temperature).save(tmp)


def inference_model(classifier, tta: str = "none", temperature: float = 1.0):
    """The one inference graph: pixels -> ``tta`` views -> ``classifier`` -> averaged
    log-probabilities / ``temperature`` -> probabilities.

    Args:
        classifier: a Keras model from 0..255 pixels to class probabilities.
        tta: one of ``none``, ``flip``, ``translate``, ``flip_translate``.
        temperature: calibration temperature (1: the classifier's own probabilities).

    Example:
        >>> model = inference_model(imgcls.create_model("classic", (16, 16, 3), 2), "flip")  # doctest: +SKIP
        >>> model.output_shape                                                            # doctest: +SKIP
        (None, 2)
    """
    import keras

    from imgcls.models.layers import TTAViews, ViewAverage, view_weights

    classifier = classifier_of(classifier)
    if classifier.name != CLASSIFIER:
        classifier = keras.Model(classifier.inputs[0], classifier.outputs[0], name=CLASSIFIER)
    inputs = keras.Input(classifier.input_shape[1:], name="pixels", dtype="float32")
    x = TTAViews(tta, name="tta_views", dtype="float32")(inputs) if tta != "none" else inputs
    probs = classifier(x)
    if tta != "none" or temperature != 1.0:
        probs = ViewAverage(view_weights(tta), temperature, name="calibrated")(probs)
    return keras.Model(inputs, probs, name="inference")


def classifier_of(model):
    """The trained classifier inside an inference model (a model written before imgcls saved
    inference models, or a bare classifier, is its own classifier)."""
    names = {layer.name for layer in model.layers}
    return model.get_layer(CLASSIFIER) if CLASSIFIER in names else model


def float32_copy(model):
    """``model`` rebuilt with every layer computing in float32 (a mixed-precision model's
    variables are float32 already, so the weights carry over exactly)."""
    if not any(_is_mixed(layer.dtype_policy.name) for layer in all_layers(model)):
        return model
    return policy_copy(model, "float32")


def policy_copy(model, policy: str):
    """``model`` rebuilt with its floating-point layers computing under the Keras dtype
    ``policy`` (``float32``, ``mixed_bfloat16`` or ``mixed_float16``), same weights.

    Variables stay float32 under every policy, so the weights carry over exactly. Towards a
    mixed policy the model's output layers stay float32, as Keras' mixed-precision guide asks,
    so probabilities are not rounded to 8 bits of mantissa; only the layers before compute in
    the lower precision.
    """
    import imgcls.models.layers  # noqa: F401 - custom layers must be registered to rebuild

    config = model.get_config()
    outputs = config.get("output_layers") or []
    if outputs and isinstance(outputs[0], str):  # one output: ["name", 0, 0]
        outputs = [outputs]
    keep = {entry[0] for entry in outputs} if policy.startswith("mixed_") else set()

    def convert(node):
        if isinstance(node, list):
            return [convert(v) for v in node]
        if not isinstance(node, dict):
            return node
        if node.get("class_name") == "DTypePolicy" and _is_float(node["config"].get("name")):
            return {**node, "config": {**node["config"], "name": policy}}
        return {k: convert(v) for k, v in node.items()}

    config["layers"] = [
        layer if layer.get("name") in keep else convert(layer) for layer in config["layers"]
    ]
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def _is_float(name: Any) -> bool:
    return isinstance(name, str) and (name in ("float32", "float16", "bfloat16") or _is_mixed(name))


def _is_mixed(value: Any) -> bool:
    if isinstance(value, dict):  # a serialised DTypePolicy
        value = value.get("config", {}).get("name")
    return isinstance(value, str) and value.startswith("mixed_")


def all_layers(model) -> list:
    """Every layer of ``model``, nested models' layers included."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out += all_layers(layer)
    return out


def write_meta(run_dir: str | Path, meta: BundleMeta) -> None:
    """Rewrite ``bundle.json`` (after calibration, say) without touching the model."""
    write_json(Path(run_dir) / META_FILE, meta.to_dict())


def read_meta(run_dir: str | Path) -> BundleMeta:
    """Read ``RUN/bundle.json``; raise :class:`ImgclsError` if it is missing or damaged."""
    run_dir = Path(run_dir)
    check(
        run_dir.is_dir(), f"RUN not found: {run_dir} (expected the --out folder of `imgcls train`)"
    )
    path = run_dir / META_FILE
    check(path.is_file(), f"RUN {run_dir} has no {META_FILE}; is it a finished training run?")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ImgclsError(f"{path} is damaged (not valid JSON: {e})") from None
    return BundleMeta.from_dict(d, str(path))


def load_model(run_dir: str | Path):
    """Load ``RUN/model.keras`` with Keras' safe mode on (no arbitrary code is run)."""
    from imgcls.backend import import_keras_quietly

    import_keras_quietly()  # a no-op once Keras runs
    import keras

    import imgcls.models.layers  # noqa: F401 - registers custom layers before deserialising

    path = Path(run_dir) / MODEL_FILE
    check(path.is_file(), f"RUN {run_dir} has no {MODEL_FILE}; is it a finished training run?")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise ImgclsError(
            f"cannot load {path}: the file is damaged or from an incompatible version "
            f"({type(e).__name__}: {str(e)[:200]})"
        ) from None


def write_seen(
    run_dir: str | Path, pixels: list[np.ndarray], hashes: np.ndarray | None = None
) -> None:
    """Store the digests of every image the run trains or validates on (``RUN/seen_digests.npy``)
    and their difference hashes (``RUN/seen_dhash.npy``, for near copies: ``imgcls suggest``);
    ``hashes``: those hashes when already known (the pixel cache keeps them), else computed."""
    from imgcls.data.hashing import dhash, pixel_digests

    digests = np.unique(np.concatenate([pixel_digests(p) for p in pixels]))
    with atomic_path(Path(run_dir) / SEEN_FILE) as tmp:
        np.save(tmp, digests)
    if hashes is None:
        hashes = np.array([dhash(np.asarray(x)) for p in pixels for x in p], np.uint64)
    hashes = np.unique(np.asarray(hashes, np.uint64))
    with atomic_path(Path(run_dir) / SEEN_DHASH_FILE) as tmp:
        np.save(tmp, hashes)


def seen_in_training(
    run_dir: str | Path, pixels: np.ndarray, paths: list[str] | None = None
) -> np.ndarray | None:
    """Indices of ``pixels`` identical to an image RUN trained or validated on.

    The run took its digests of the images decoded at the size it trained at. With ``paths``
    (the files of ``pixels``), images decoded at another size are decoded again at that size
    (through the shared pixel cache) before they are compared: a pretrained backbone trains at
    224 and predicts at 256, and a resize of other decoded pixels is never the image it saw.
    ``None`` for a run written before imgcls recorded what it saw (no ``seen_digests.npy``).
    """
    from imgcls.data.hashing import pixel_digests

    path = Path(run_dir) / SEEN_FILE
    if not path.is_file():
        return None
    try:
        seen = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ImgclsError(
            f"{path} is damaged ({e}); retrain, or delete it to skip the check"
        ) from None
    rows = np.arange(len(pixels))
    trained = read_meta(run_dir).config.get("image_size")
    if paths is not None and trained and tuple(pixels.shape[1:3]) != tuple(trained):
        from imgcls.data.cache import cached_pixels

        decoded = cached_pixels(list(paths), tuple(trained))
        pixels, rows = decoded.pixels, np.flatnonzero(decoded.ok)
    step = 4096  # rows at a time: a large pool stays on disk (DiskRows)
    digests = [pixel_digests(np.asarray(pixels[i : i + step])) for i in range(0, len(rows), step)]
    digests = np.concatenate(digests) if digests else np.zeros(0, np.uint64)
    return rows[np.isin(digests, seen)]
