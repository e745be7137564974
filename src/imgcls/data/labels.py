"""Suspected label errors: out-of-sample class probabilities ranked by cleanlab.

Probabilities come either from the caller (``probabilities``, e.g.
:class:`imgcls.predict.RunProbabilities` for ``--from-run``: a trained model never saw these
labels only if it was trained on other data; otherwise they are optimistic) or from k-fold
cross-validation of a quick model: single-layer k-means patch features (Coates & Ng, 2011)
and a logistic regression, all in NumPy and scikit-learn. ``cleanlab.filter.find_label_issues``
then flags images whose given label the probabilities disagree with, most suspicious first.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from imgcls.errors import check

FOLDS = 5  # cross-validation folds: each image is scored by a model that never saw it
FEATURE_SIDE = 32  # pixels: images are resized to this square before feature extraction
PATCH = 6  # pixels: side of the k-means patches
CENTROIDS = 256  # k-means patch centroids; features = 4 quadrants x centroids
PATCH_SAMPLES = 50_000  # random patches used to fit whitening and k-means
KMEANS_ITERATIONS = 10  # Lloyd iterations: the features barely change after a few
# (uint8 pixels (N, H, W, 3), class names, the files or None) -> probabilities
# (N, len(class names)); its str() names it in the report ("run runs/x").
Probabilities = Callable[[np.ndarray, list[str], list[str] | None], np.ndarray]
ENCODE_BATCH = 64  # images encoded at once (bounds memory: batch x 729 patches x centroids floats)
LOGREG_C = 0.01  # inverse L2 strength of the logistic regression on standardised features
# A flagged image's suggested fix: the class the model favours when it is at least this sure of
# it, else leaving the image out. A wrong relabel puts the noise back (on 5,000 noisy CIFAR-10
# images the quick model's favoured class was the true one for 18% of its flags, 41% of those
# at p >= 0.7), while leaving out an image costs one image; docs/BENCHMARKS.md measures both.
RELABEL_MIN_PROBABILITY = 0.6


def find_label_issues(
    cache: str | os.PathLike,
    labels: np.ndarray,
    class_names: list[str],
    ids: list[str],
    seed: int = 0,
    probabilities: Probabilities | None = None,
    paths: list[str] | None = None,
) -> list[dict]:
    """Rank images whose given label looks wrong.

    Args:
        cache: a ``.npy`` of uint8 pixels ``(N, H, W, 3)``, row ``i`` for image ``i``.
        labels: the given label per image.
        class_names: the names ``labels`` index into.
        ids: the image ids reported as ``path``.
        seed: seeds the folds and the feature model.
        probabilities: gives the class probabilities of the pixels instead of cross-validation.
        paths: the image files (``probabilities`` may decode them at its model's own size).

    Returns:
        ``{"path", "kind": "label_issue", "detail", "given", "suggested", "given_probability",
        "suggested_probability", "action"}`` per flagged image, most suspicious first;
        ``action`` is the suggested fix: ``relabel`` (to ``suggested``) when its probability is
        at least :data:`RELABEL_MIN_PROBABILITY`, else ``exclude``.
    """
    from cleanlab.filter import find_label_issues as cleanlab_find

    pixels = np.load(cache, mmap_mode="r")
    labels = np.asarray(labels, dtype=np.int64)
    if probabilities is not None:
        probs = np.asarray(probabilities(pixels, class_names, paths), dtype=np.float64)
        check(
            probs.shape == (len(labels), len(class_names)),
            f"{probabilities} gave probabilities of shape {probs.shape}; "
            f"expected {(len(labels), len(class_names))}",
        )
    else:
        probs = cross_val_probabilities(pixels, labels, len(class_names), seed=seed)
    # low_self_confidence flags cleanlab's estimated number of issues, least confident first.
    # On CIFAR-10 with 5% flipped labels and an 81%-accurate model it keeps the recall of the
    # default prune_by_noise_rate (0.86 vs 0.85) at much higher precision (0.60 vs 0.39).
    ranked = cleanlab_find(
        labels, probs, filter_by="low_self_confidence", return_indices_ranked_by="self_confidence"
    )
    source = str(probabilities) if probabilities is not None else f"{FOLDS}-fold cross-validation"
    rows = []
    for i in ranked:
        given, suggested = int(labels[i]), int(np.argmax(probs[i]))
        sure = probs[i, suggested] >= RELABEL_MIN_PROBABILITY
        fix = (
            f"relabel to {class_names[suggested]}" if sure else "leave it out (the model is unsure)"
        )
        rows.append(
            {
                "path": ids[i],
                "kind": "label_issue",
                "given": class_names[given],
                "suggested": class_names[suggested],
                "given_probability": round(float(probs[i, given]), 4),
                "suggested_probability": round(float(probs[i, suggested]), 4),
                "action": "relabel" if sure else "exclude",
                "detail": f"labelled {class_names[given]} (p={probs[i, given]:.2f}) but looks like "
                f"{class_names[suggested]} (p={probs[i, suggested]:.2f}) by {source}; "
                f"suggested: {fix}",
            }
        )
    return rows


def cross_val_probabilities(
    pixels: np.ndarray, labels: np.ndarray, n_classes: int, seed: int = 0, folds: int = FOLDS
) -> np.ndarray:
    """Out-of-sample probabilities ``(N, n_classes)`` by stratified k-fold cross-validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels, minlength=n_classes)
    folds = int(min(folds, counts[counts > 0].min()))
    check(folds >= 2, "--label-issues needs at least 2 images in every class for cross-validation")
    features = patch_features(pixels, seed)
    probs = np.zeros((len(labels), n_classes))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(
        features, labels
    ):
        model = LogisticRegression(C=LOGREG_C, max_iter=300)
        model.fit(features[train], labels[train])
        probs[np.ix_(test, model.classes_)] = model.predict_proba(features[test])
    return probs


def patch_features(pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Standardised k-means patch features ``(N, 4 * CENTROIDS)`` of uint8 images (Coates & Ng)."""
    rng = np.random.default_rng(seed)
    n = len(pixels)
    sample = _images(pixels, rng.choice(n, size=min(n, 2000), replace=False))
    span = FEATURE_SIDE - PATCH + 1
    per_image = max(1, PATCH_SAMPLES // len(sample))
    r, c = rng.integers(0, span, (2, len(sample), per_image))
    patches = np.stack(
        [
            sample[i, r[i, k] : r[i, k] + PATCH, c[i, k] : c[i, k] + PATCH]
            for i in range(len(sample))
            for k in range(per_image)
        ]
    ).reshape(-1, PATCH * PATCH * 3)
    patches = _normalise(patches)
    mean = patches.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(np.cov(patches - mean, rowvar=False))
    zca = ((eigvec / np.sqrt(eigval + 0.1)) @ eigvec.T).astype(
        np.float32
    )  # 0.1: regularises small eigenvalues
    mean = mean.astype(np.float32)
    centroids = _kmeans((patches - mean) @ zca, rng)
    out = np.empty((n, 4 * CENTROIDS), np.float32)
    for start in range(0, n, ENCODE_BATCH):
        out[start : start + ENCODE_BATCH] = _encode(
            _images(pixels, np.arange(start, min(n, start + ENCODE_BATCH))), mean, zca, centroids
        )
    out -= out.mean(axis=0)
    out /= out.std(axis=0) + 1e-6
    return out


def _kmeans(
    patches: np.ndarray, rng: np.random.Generator, iterations: int = KMEANS_ITERATIONS
) -> np.ndarray:
    """Plain Lloyd k-means from random patches: cheap, and all the features need (Coates & Ng)."""
    patches = patches.astype(np.float32)
    centroids = patches[rng.choice(len(patches), CENTROIDS, replace=False)].copy()
    for _ in range(iterations):
        nearest = np.argmax(patches @ centroids.T - 0.5 * (centroids**2).sum(1), axis=1)
        counts = np.bincount(nearest, minlength=CENTROIDS)
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest, patches)
        alive = counts > 0  # an empty cluster keeps its old centroid
        centroids[alive] = sums[alive] / counts[alive, None]
    return centroids


def _images(pixels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """float32 images at FEATURE_SIDE x FEATURE_SIDE."""
    batch = np.asarray(pixels[np.sort(index)])
    if batch.shape[1:3] != (FEATURE_SIDE, FEATURE_SIDE):
        from imgcls.data.decode import resize_array

        batch = resize_array(batch, (FEATURE_SIDE, FEATURE_SIDE))
    return batch.astype(np.float32)


def _normalise(patches: np.ndarray) -> np.ndarray:
    patches = patches - patches.mean(axis=1, keepdims=True)
    return patches / np.sqrt(
        patches.var(axis=1, keepdims=True) + 10.0
    )  # 10: brightness-noise floor (0..255)


def _encode(
    images: np.ndarray, mean: np.ndarray, zca: np.ndarray, centroids: np.ndarray
) -> np.ndarray:
    """Triangle k-means activations of every patch, sum-pooled over the four image quadrants."""
    windows = np.lib.stride_tricks.sliding_window_view(images, (PATCH, PATCH), axis=(1, 2))
    b, h, w = windows.shape[:3]
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, PATCH * PATCH * 3)
    z = ((_normalise(patches) - mean) @ zca).astype(np.float32)
    dist = np.sqrt(
        np.maximum((z * z).sum(1, keepdims=True) - 2 * z @ centroids.T + (centroids**2).sum(1), 0)
    )
    act = np.maximum(dist.mean(axis=1, keepdims=True) - dist, 0).reshape(b, h, w, -1)
    hh, hw = h // 2, w // 2
    quads = [act[:, :hh, :hw], act[:, :hh, hw:], act[:, hh:, :hw], act[:, hh:, hw:]]
    return np.concatenate([q.sum(axis=(1, 2)) for q in quads], axis=1)
