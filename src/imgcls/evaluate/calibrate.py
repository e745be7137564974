"""Temperature scaling: one number that makes a run's probabilities honest.

The temperature ``T`` rescales probabilities as ``softmax(log(p) / T)`` (see
:func:`apply_temperature`); it never changes which class wins. It is fitted on the run's
validation split by minimising the negative log likelihood and stored inside the bundle's
inference model (``model.keras``, with a copy in ``bundle.json``), so every later prediction,
evaluation, server and export applies it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import check

LOG_T_BOUNDS = (-4.0, 4.0)  # search T in [e^-4, e^4] ~ [0.02, 55]: far beyond any sane model


def fit_temperature(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The temperature minimising the mean negative log likelihood of ``y_true``.

    Args:
        y_true: int label per image.
        probs: uncalibrated ``(N, n_classes)`` probabilities.

    Returns:
        ``T > 0``; 1.0 for an empty set.

    Example:
        >>> p = np.array([[0.99, 0.01], [0.99, 0.01], [0.01, 0.99], [0.99, 0.01]])
        >>> fit_temperature(np.array([0, 0, 1, 1]), p) > 1   # overconfident -> soften
        True
    """
    from scipy.optimize import minimize_scalar

    y_true = np.asarray(y_true, dtype=np.int64)
    if not len(y_true):
        return 1.0
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0))
    rows = np.arange(len(y_true))

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[rows, y_true] - np.log(np.exp(z).sum(axis=1))).mean())

    result = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def calibrate(
    run: str | Path, data: str | Path | None = None, split: str | None = None
) -> dict[str, Any]:
    """Fit RUN's temperature on held-out data and store it in ``RUN/bundle.json``.

    Args:
        run: a run folder written by ``imgcls train``.
        data: the run's own data (default: what ``bundle.json`` records); its validation split
            is used. Other labelled data is used whole.
        split: which split of the run's own data to fit on (default ``val``).

    Returns:
        ``{"temperature", "n_images", "split", "data", "nll_before", "nll_after", "ece_before",
        "ece_after"}``, also stored as ``metrics["calibration"]`` in ``bundle.json``.
        The temperature goes into ``model.keras`` (and ``bundle.json``).

    Raises:
        ImgclsError: the run or data is unusable, or the split is empty.

    Example:
        >>> imgcls.calibrate("runs/digits")["temperature"]      # doctest: +SKIP
        1.43
    """
    from imgcls.bundle import read_meta, save_inference_model, write_meta
    from imgcls.evaluate.dataset import load_eval_set
    from imgcls.evaluate.metrics import calibration, log_loss
    from imgcls.predict import Predictor

    meta = read_meta(run)
    data = data if data is not None else meta.data.get("argument")
    check(data is not None, f"RUN {run}: bundle.json records no data; pass DATA")
    predictor = Predictor(run, meta=meta)
    held_out = load_eval_set(run, data, meta, split, default_split="val")
    raw = predictor.predict_pixels(held_out.pixels, temperature=1.0)
    y = held_out.y_true
    temperature = fit_temperature(y, raw)
    scaled = apply_temperature(raw, temperature)
    result = {
        "temperature": temperature,
        "n_images": int(len(y)),
        "split": held_out.split,
        "data": str(data),
        "nll_before": log_loss(y, raw),
        "nll_after": log_loss(y, scaled),
        "ece_before": calibration(y, raw)["ece"],
        "ece_after": calibration(y, scaled)["ece"],
    }
    meta.temperature = temperature
    meta.metrics = {**meta.metrics, "calibration": result}
    save_inference_model(run, predictor.classifier, meta.tta, temperature)
    write_meta(run, meta)
    return result


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities as softmax(log(p) / T); ``T = 1`` leaves them unchanged."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)
