"""Duplicate images in a data set: the same bytes, or the same picture re-encoded or resized.

Exact duplicates are found by SHA-256 of the file; near duplicates by a 64-bit dHash (pairs
within :data:`NEAR_BITS` bits) confirmed on 8x8 thumbnails of the decoded pixels. Every pair
joins a :class:`~imgcls.data.hashing.DisjointSets`, so the split can keep a group together.
Each finding is an issue row ``{"path", "kind", "index", "detail"}`` for ``imgcls prepare``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgcls.data.hashing import DisjointSets, near_pairs
from imgcls.data.scan import ScanResult
from imgcls.data.sources import SPLIT_NAMES, ImageSet

NEAR_BITS = 4  # dHash bits (of 64) two near duplicates may differ in
NEAR_MAX_DIFF = (
    12.0  # mean |difference| (0..255) of brightness-normalised 8x8 thumbnails to confirm a pair
)


def exact_duplicates(
    images: ImageSet, sha256: np.ndarray, keep: np.ndarray, sets: DisjointSets
) -> list[dict]:
    """Leave extra copies of the same bytes out of ``keep`` (in place), the first copy kept (the
    training one when DATA has splits: copies elsewhere would leak); copies with different
    labels are all left out. Returns their issues."""
    ids, labels, names = images.ids, images.labels, images.class_names
    key = sha256.view(np.dtype((np.void, 32))).ravel()
    order = np.flatnonzero(keep)[np.argsort(key[keep], kind="stable")]
    if not len(order):
        return []
    sorted_keys = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    issues = []
    for group in np.split(order, starts[1:]):
        if len(group) < 2:
            continue
        group = np.sort(group)
        if images.splits is not None:
            ranks = [SPLIT_NAMES.index(images.splits[i]) for i in group]
            group = group[np.argsort(ranks, kind="stable")]
        first = group[0]
        for i in group:
            sets.union(first, i)
        labelled = sorted({names[labels[i]] for i in group})
        if len(labelled) > 1:
            for i in group:
                keep[i] = False
                others = ", ".join(f"{ids[j]} ({names[labels[j]]})" for j in group if j != i)
                detail = (
                    f"same bytes as {others}; labelled {' and '.join(labelled)}, "
                    "so every copy is left out"
                )
                issues.append(_issue(ids[i], "conflicting_labels", i, detail))
            continue
        for i in group[1:]:
            keep[i] = False
            detail, kind = f"same bytes as {ids[first]}", "exact_duplicate"
            if images.splits is not None and images.splits[i] != images.splits[first]:
                kind = "cross_split_duplicate"
                detail += f" ({images.splits[first]} vs {images.splits[i]})"
            issues.append(_issue(ids[i], kind, i, detail + "; left out, the first copy is kept"))
    return issues


def near_duplicates(
    scan: ScanResult, keep: np.ndarray, scratch: Path, size: tuple[int, int]
) -> list[tuple[int, int, int]]:
    """Confirmed near-duplicate pairs ``(earlier, later, differing bits)`` among kept images;
    ``scratch`` holds every image's pixels at ``size``, row ``i`` for image ``i``."""
    pairs = near_pairs(scan.dhash, NEAR_BITS, valid=keep)
    if not len(pairs):
        return []
    from imgcls.data.hashing import popcount64

    bits = popcount64(scan.dhash[pairs[:, 0]] ^ scan.dhash[pairs[:, 1]])
    row_bytes = size[0] * size[1] * 3
    thumbs: dict[int, np.ndarray] = {}
    with open(scratch, "rb") as f:

        def thumb(i: int) -> np.ndarray:
            if i not in thumbs:
                f.seek(int(i) * row_bytes)
                pixels = np.frombuffer(f.read(row_bytes), np.uint8).reshape(size[0], size[1], 3)
                thumbs[i] = _normalised_thumb(pixels)
            return thumbs[i]

        found = [
            (int(i), int(j), int(b))
            for (i, j), b in zip(pairs, bits, strict=True)
            if np.abs(thumb(i) - thumb(j)).mean() <= NEAR_MAX_DIFF
        ]
    return sorted(found, key=lambda t: (t[1], t[0]))


def near_duplicate_issues(
    images: ImageSet, near: list[tuple[int, int, int]], sets: DisjointSets
) -> list[dict]:
    """Join each near pair in ``sets``; one issue per later image (all are kept, and the split
    puts each group in one split)."""
    ids, labels, names = images.ids, images.labels, images.class_names
    issues, reported = [], set()
    for i, j, bits in near:
        sets.union(i, j)
        if j in reported:
            continue
        reported.add(j)
        detail = f"looks like {ids[i]} (dHash differs in {bits} of 64 bits)"
        if labels[i] != labels[j]:
            detail += f"; labelled {names[labels[i]]} there and {names[labels[j]]} here"
        issues.append(_issue(ids[j], "near_duplicate", j, detail + "; kept, same split"))
    return issues


def mark_leaks(issues: list[dict], near: list[tuple[int, int, int]], splits: np.ndarray) -> None:
    """Near duplicates whose pair ended in another split (DATA's own splits cannot be moved)
    become ``cross_split_duplicate`` issues, in place."""
    partners = {j: i for i, j, _ in reversed(near)}
    for row in issues:
        if row["kind"] == "near_duplicate":
            j = row["index"]
            if splits[partners[j]] != splits[j]:
                row["kind"] = "cross_split_duplicate"
                row["detail"] = row["detail"].replace(
                    "kept, same split", f"{splits[partners[j]]} vs {splits[j]}: leakage"
                )


def _issue(path: str, kind: str, index: int, detail: str) -> dict:
    return {"path": path, "kind": kind, "index": int(index), "detail": detail}


def _normalised_thumb(pixels: np.ndarray) -> np.ndarray:
    from PIL import Image

    small = np.asarray(Image.fromarray(pixels).resize((8, 8), Image.Resampling.BOX), np.float32)
    return small - small.mean(axis=(0, 1))  # per-channel brightness shifts do not count
