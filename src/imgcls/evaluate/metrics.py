"""Metrics computed from true labels and predicted class probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15  # equal-width confidence bins, the usual setting (Guo et al., 2017)
TOP_K = 5  # top-k accuracy uses k=5 when there are more than 5 classes, else n_classes - 1
PROB_FLOOR = 1e-15  # probabilities are clipped here before a log, as scikit-learn's log_loss does


def compute_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Accuracy, per-class and averaged precision/recall/F1, the confusion matrix, top-k
    accuracy, balanced accuracy, log loss and expected calibration error.

    Args:
        y_true: int label per image.
        probs: ``(N, n_classes)`` predicted probabilities.
        class_names: names for the label indices.

    Returns:
        A JSON-able dict; ``confusion_matrix[i][j]`` counts images of class i predicted as j.
        Macro and weighted averages run over the classes that occur in ``y_true`` or in the
        predictions, so a class absent from the data does not drag them down.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = len(class_names)
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    labels = np.arange(n_classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    seen = np.union1d(y_true, y_pred)
    k = top_k_for(n_classes)
    metrics = {
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else float("nan"),
        "n_images": int(len(y_true)),
        "class_names": list(class_names),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "top_k": k,
        "top_k_accuracy": top_k_accuracy(y_true, probs, k),
        "balanced_accuracy": float(recall[support > 0].mean())
        if (support > 0).any()
        else float("nan"),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = (
            precision_recall_fscore_support(
                y_true, y_pred, labels=seen, average=average, zero_division=0
            )
            if len(y_true)
            else (np.nan,) * 4
        )
        metrics[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    metrics["log_loss"] = log_loss(y_true, probs)
    metrics.update(calibration(y_true, probs))
    return metrics


def top_k_for(n_classes: int) -> int:
    """The k used for top-k accuracy: 5, or one less than the number of classes when that is fewer."""
    return int(min(TOP_K, max(1, n_classes - 1)))


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the ``k`` most probable (ties by class order)."""
    if not len(y_true):
        return float("nan")
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((best == np.asarray(y_true)[:, None]).any(axis=1).mean())


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log probability of the true class (natural log)."""
    if not len(y_true):
        return float("nan")
    p = probs[np.arange(len(y_true)), np.asarray(y_true)]
    return float(-np.log(np.clip(p, PROB_FLOOR, 1.0)).mean())


def calibration(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error over equal-width confidence bins, with the bins themselves.

    Returns:
        ``{"ece": float, "ece_bins": [{"lower", "upper", "count", "confidence", "accuracy"}]}``;
        ``confidence`` and ``accuracy`` are ``None`` for an empty bin. A confidence of exactly 1
        falls in the last bin.
    """
    y_true = np.asarray(y_true)
    n = len(y_true)
    conf = probs.max(axis=1) if n else np.zeros(0)
    correct = (probs.argmax(axis=1) == y_true) if n else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        members = which == b
        count = int(members.sum())
        row = {
            "lower": float(edges[b]),
            "upper": float(edges[b + 1]),
            "count": count,
            "confidence": None,
            "accuracy": None,
        }
        if count:
            row["confidence"] = float(conf[members].mean())
            row["accuracy"] = float(correct[members].mean())
            ece += count / n * abs(row["accuracy"] - row["confidence"])
        bins.append(row)
    return {"ece": float(ece) if n else float("nan"), "ece_bins": bins}
