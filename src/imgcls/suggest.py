"""``imgcls suggest RUN POOL --n N``: which unlabeled images to label next.

An image helps most when the model is unsure of it and it is unlike what was already picked.
So the pool is decoded exactly as training decoded its images, the run predicts it (with its
own test-time augmentation) and gives its features (the input of its last Dense layer); the
``POOL_FACTOR * N`` most uncertain images (smallest margin between the top two classes; at
least 5,000) are the candidates, and a greedy k-center walk over their features picks ``N``:
first the most uncertain, then each time the candidate that maximises uncertainty x distance to everything
picked so far, so 100 suggestions are not 100 near copies. Images identical or nearly
identical (dHash within :data:`~imgcls.data.duplicates.NEAR_BITS` bits) to an image the run
trained or validated on are left out, and unreadable files are reported, not ranked.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from imgcls.errors import check

# k-center chooses among the most uncertain 10 x N images, and at least 5,000 (all of a
# smaller pool): cutting at exactly 10 x N could leave one cluster of near-equal uncertainty.
POOL_FACTOR, MIN_CANDIDATES = 10, 5000
COLUMNS = ("rank", "path", "guess", "confidence", "margin")


def margins(probs: np.ndarray) -> np.ndarray:
    """Top class probability minus the second's, per row (0: a tie, 1: certain)."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def rank_suggestions(
    probs: np.ndarray, features: np.ndarray, n: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the ``n`` images to label first, best first (see the module).

    Args:
        probs: ``(N, K)`` class probabilities.
        features: ``(N, D)`` the model's features of the same images.
        n: how many to pick (fewer if fewer are eligible).
        exclude: boolean ``(N,)``: images never to suggest.
    """
    uncertainty = 1.0 - margins(probs)
    eligible = np.flatnonzero(~exclude) if exclude is not None else np.arange(len(probs))
    order = eligible[np.argsort(-uncertainty[eligible], kind="stable")]
    candidates = order[: max(n * POOL_FACTOR, MIN_CANDIDATES)]
    if not len(candidates) or n <= 0:
        return np.zeros(0, dtype=np.int64)
    f = np.asarray(features[candidates], dtype=np.float64)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)  # distance ~ angle
    u = uncertainty[candidates]
    picked = [0]  # the most uncertain
    nearest = np.linalg.norm(f - f[0], axis=1)
    while len(picked) < min(n, len(candidates)):
        score = u * nearest
        score[picked] = -np.inf
        j = int(np.argmax(score))
        picked.append(j)
        nearest = np.minimum(nearest, np.linalg.norm(f - f[j], axis=1))
    return candidates[picked]


def near_training(
    run_dir: Path,
    pixels: np.ndarray,
    hashes: np.ndarray | None = None,
    paths: list[str] | None = None,
) -> np.ndarray:
    """Boolean per image: identical or nearly identical to one RUN trained or validated on
    (pixel digests; dHash pairs found by the banded search ``prepare`` uses). ``hashes``: the
    dHash of each image when known (the pixel cache keeps them), else computed here;
    ``paths``: the files of ``pixels``, for the digests at the size RUN trained at."""
    from imgcls.bundle import SEEN_DHASH_FILE, seen_in_training
    from imgcls.data.duplicates import NEAR_BITS
    from imgcls.data.hashing import dhash, near_pairs

    near = np.zeros(len(pixels), dtype=bool)
    identical = seen_in_training(run_dir, pixels, paths)
    if identical is not None:
        near[identical] = True
    path = run_dir / SEEN_DHASH_FILE
    if path.is_file():
        seen = np.load(path, allow_pickle=False).astype(np.uint64)
        if hashes is None:
            hashes = np.array([dhash(np.asarray(image)) for image in pixels], dtype=np.uint64)
        pool = np.asarray(hashes, np.uint64)
        pairs = near_pairs(np.concatenate([seen, pool]), NEAR_BITS)
        across = (pairs[:, 0] < len(seen)) & (pairs[:, 1] >= len(seen))  # seen first: i < j
        near[pairs[across, 1] - len(seen)] = True
    return near


def features_of(predictor, pixels: np.ndarray) -> np.ndarray:
    """The classifier's features: the input of its last Dense layer, per image, in the batches
    prediction uses (:func:`~imgcls.predict.run_batches`: a pretrained backbone's activations
    in batches of 256 photos took 21.8 GB for a pool of 1,800 and were killed)."""
    import keras

    from imgcls.predict import run_batches

    classifier = predictor.classifier
    dense = [layer for layer in classifier.layers if isinstance(layer, keras.layers.Dense)]
    check(bool(dense), f"run {predictor.run_dir}: its classifier has no Dense layer to read")
    extractor = keras.Model(classifier.input, dense[-1].input)  # one input: no list structure
    width = int(np.prod(dense[-1].input.shape[1:]))
    features = run_batches(lambda x: np.asarray(extractor(x, training=False)), pixels, width)
    return features.reshape(len(pixels), -1)


def suggest(run: str | Path, pool: list[str], n: int, out: str | Path | None = None) -> list[dict]:
    """Rank POOL's images by how much labeling them should help RUN; write ``out`` (CSV).

    Returns:
        One ``{"rank", "path", "guess", "confidence", "margin"}`` per suggestion, best first.

    Raises:
        ImgclsError: ``n`` is not positive, POOL names no image, or none of them decodes.
    """
    from imgcls.data.cache import cached_pixels
    from imgcls.data.sources import list_image_files
    from imgcls.io import atomic_path
    from imgcls.predict import Predictor

    check(isinstance(n, int) and n > 0, f"`n` must be a positive integer. Received: n={n!r}")
    run_dir = Path(run)
    predictor = Predictor(run_dir)
    paths = list_image_files([str(p) for p in pool])
    check(bool(paths), f"POOL {' '.join(map(str, pool))}: no image files found")
    pixels, ok, issues, hashes = cached_pixels(paths, predictor.image_size)  # every core, once
    for issue in issues:
        print(f"imgcls: left out {issue['path']}: {issue['kind']}: {issue['detail']}",
              file=sys.stderr)  # fmt: skip
    kept = [p for p, good in zip(paths, ok, strict=True) if good]
    check(bool(kept), f"POOL: none of the {len(paths)} image files could be decoded")
    probs = predictor.predict_pixels(pixels)
    order = rank_suggestions(
        probs, features_of(predictor, pixels), n, near_training(run_dir, pixels, hashes, kept)
    )
    m = margins(probs)
    rows = [{"rank": r + 1, "path": kept[i], "guess": predictor.classes_[int(probs[i].argmax())],
             "confidence": round(float(probs[i].max()), 4), "margin": round(float(m[i]), 4)}
            for r, i in enumerate(order)]  # fmt: skip
    if out is not None:
        with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return rows
