"""Evaluation of a trained run on a data set: ``metrics.json`` and a readable ``report.html``.

Modules: :mod:`~imgcls.evaluate.dataset` (which images, decoded once), :mod:`.metrics`,
:mod:`.report` and :mod:`.plots` (the HTML page and its figures), :mod:`.explain` (feature
maps, Grad-CAM) and :mod:`.calibrate` (temperature scaling).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgcls.bundle import read_meta, seen_in_training
from imgcls.evaluate.dataset import SPLIT_CHOICES, checkpoint_info, load_eval_set
from imgcls.evaluate.metrics import compute_metrics
from imgcls.io import atomic_open, write_csv, write_json

SEEN_IDS_LISTED = 20  # ids of already-seen images named in metrics.json (the count is exact)

__all__ = ["SPLIT_CHOICES", "evaluate", "write_predictions"]


def write_predictions(path: Path, ids: list[str], y_true, probs, class_names: list[str]) -> None:
    """One row per image: id, true and predicted label, and every class probability."""
    header = ["id", "label", "predicted", *(f"p_{name}" for name in class_names)]
    rows = (
        [i, class_names[t], class_names[int(p.argmax())], *(f"{v:.7g}" for v in p)]
        for i, t, p in zip(ids, y_true, probs, strict=True)
    )
    write_csv(path, header, rows)


def evaluate(
    run: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    split: str | None = None,
    predictor=None,
    tta: str | bool | None = None,
    report: bool = True,
    engine: str = "keras",
    corrections: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate RUN on DATA; write ``out/metrics.json``, ``out/predictions.csv`` and ``out/report.html``.

    When DATA is the data set RUN was trained on, only its ``split`` (default: test) counts,
    exactly as recorded in ``RUN/split.csv``; any other DATA counts every image. The stored
    calibration temperature, if any, is applied. Nothing is written unless every figure was
    computed, and each file is renamed into place whole.

    Args:
        run: a run folder written by ``imgcls train``.
        data: labelled data (folder, CSV, prepared folder or built-in name).
        out: folder for the results; ``None`` computes the metrics only.
        split: ``test``, ``val``, ``train`` or ``all`` of the run's own data.
        predictor: a loaded :class:`~imgcls.predict.Predictor` to reuse.
        tta: test-time augmentation (``"none"``, ``"flip"``, ``"flip_translate"``; ``True`` is
            ``"flip"``); ``None`` uses the run's own, as recorded in ``bundle.json``.
        report: also write ``report.html`` (when ``out`` is given).
        engine: ``"keras"``, ``"keras-bf16"`` or ``"onnx"`` (see :mod:`imgcls.engine`).
        corrections: an ``imgcls review`` corrections file to apply to DATA (default: a
            folder's own ``.imgcls/corrections.csv`` when it has one).

    Returns:
        The content of ``metrics.json``.

    Raises:
        ImgclsError: DATA holds labels the model does not know, the split is empty, or the run's
            bundle is damaged.

    Example:
        >>> imgcls.evaluate("runs/digits", "digits", out="eval/")["accuracy"]   # doctest: +SKIP
        0.97
    """
    from imgcls.predict import Predictor

    meta = predictor.meta if predictor is not None else read_meta(run)
    predictor = predictor or Predictor(run, meta=meta, engine=engine)
    ev = load_eval_set(run, data, meta, split, corrections=corrections)
    probs = predictor.predict_pixels(ev.pixels, tta=tta)  # the bundle's own inference graph
    raw = None  # the same graph with temperature 1, for the "before calibration" figures
    if meta.temperature != 1.0:
        raw = predictor.predict_pixels(ev.pixels, temperature=1.0, tta=tta)
    metrics = _metrics(run, data, ev, probs, raw, predictor, tta)
    if out is not None:
        _write(Path(out), metrics, ev, probs, raw, predictor, run, report)
    return metrics


def _metrics(run, data, ev, probs, raw, predictor, tta) -> dict[str, Any]:
    """``metrics.json``: the figures, and what was evaluated with what."""
    from imgcls.predict import resolve_tta

    meta = predictor.meta
    seen = seen_in_training(run, ev.pixels, ev.paths)  # at the size it trained at
    metrics = compute_metrics(ev.y_true, probs, meta.class_names)
    metrics.update(
        {
            "run": str(run),
            "data": str(data),
            "split": ev.split,
            "left_out": ev.left_out,
            "tta": resolve_tta(tta, predictor.tta),
            "engine": predictor.engine,
            "temperature": meta.temperature,
            "checkpoint": checkpoint_info(run),
            "dataset": ev.describe(data, meta.class_names),
            # Images identical to ones the run trained or validated on: if any, the accuracy is
            # not a held-out estimate. None for runs that predate the record.
            "seen_in_training": None
            if seen is None
            else {"n": int(len(seen)), "ids": [ev.ids[i] for i in seen[:SEEN_IDS_LISTED]]},
        }
    )
    if raw is not None:
        from imgcls.evaluate.metrics import calibration, log_loss

        metrics["uncalibrated"] = {
            "log_loss": log_loss(ev.y_true, raw),
            "ece": calibration(ev.y_true, raw)["ece"],
        }
    return metrics


def _write(out: Path, metrics, ev, probs, raw, predictor, run, report: bool) -> None:
    """``predictions.csv``, ``metrics.json`` and ``report.html``, each renamed into place whole
    once every figure is computed."""
    meta = predictor.meta
    page = None
    if report:
        from imgcls.evaluate.report import ReportInputs, build_report

        page = build_report(
            ReportInputs(
                metrics=metrics,
                run=Path(run),
                pixels=ev.pixels,
                ids=ev.ids,
                y_true=ev.y_true,
                probs=probs,
                raw_probs=raw,
                model=predictor.classifier,
                calibration=meta.metrics.get("calibration") or {},
            )
        )
    write_predictions(out / "predictions.csv", ev.ids, ev.y_true, probs, meta.class_names)
    write_json(out / "metrics.json", metrics)
    if page is not None:
        with atomic_open(out / "report.html", "w", encoding="utf-8") as f:
            f.write(page)
