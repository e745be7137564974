"""Metrics computed from true labels and predicted class probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        y_true: int label per image.
        probs: ``(N, n_classes)`` predicted probabilities.
        class_names: names for the label indices.

    Returns:
        A JSON-able dict; ``confusion_matrix[i][j]`` counts images of class i predicted as j.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = len(class_names)
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    labels = np.arange(n_classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else float("nan"),
        "n_images": int(len(y_true)),
        "class_names": list(class_names),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
