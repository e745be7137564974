"""Content hashes for duplicate detection: sha256 of the bytes, dHash of the pixels.

Exact duplicates share a sha256. Near duplicates (re-encoded, resized, slightly brightened)
share most bits of a 64-bit difference hash (dHash) computed from the decoded pixels; the
candidate pairs are found without comparing every pair, by bucketing bands of the hash
(two hashes within ``d`` bits agree exactly on at least one of ``d + 1`` bands).
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

HASH_SIDE = 8  # dHash compares 9x8 grey cells left to right: 64 bits
MAX_BUCKET = 4096  # hashes compared pairwise inside one band bucket at most (flat images pile up)


def sha256_file(path: str, block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in blocks of ``block`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def pixel_digests(pixels: np.ndarray) -> np.ndarray:
    """A 64-bit digest (blake2b) of each image in uint8 ``pixels`` ``(n, H, W, 3)``.

    Images with equal pixels get equal digests; any other pair collides with chance 2**-64.
    """
    return np.array(
        [
            int.from_bytes(
                hashlib.blake2b(np.ascontiguousarray(p).tobytes(), digest_size=8).digest(), "little"
            )
            for p in pixels
        ],
        dtype=np.uint64,
    )


def dhash(pixels: np.ndarray) -> int:
    """The 64-bit difference hash of RGB uint8 ``pixels`` ``(H, W, 3)``.

    The image is reduced to 9x8 grey cells; each bit says whether a cell is brighter than its
    right-hand neighbour. Brightness changes and re-encoding flip few bits.
    """
    grey = (
        Image.fromarray(pixels)
        .convert("L")
        .resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BOX)
    )
    cells = np.asarray(grey, dtype=np.int16)
    bits = (cells[:, 1:] > cells[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def popcount64(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64 in ``x``."""
    return np.unpackbits(
        np.ascontiguousarray(x, dtype=">u8").view(np.uint8).reshape(-1, 8), axis=1
    ).sum(axis=1)


def near_pairs(
    hashes: np.ndarray, max_distance: int, valid: np.ndarray | None = None
) -> np.ndarray:
    """Index pairs ``(i, j)`` with ``i < j`` whose hashes differ in at most ``max_distance`` bits.

    Args:
        hashes: uint64 hash per image.
        max_distance: the most differing bits that still count as near.
        valid: boolean mask of the hashes to consider (others are skipped).

    Returns:
        int64 array ``(n_pairs, 2)``, sorted and without repeats.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    index = np.flatnonzero(valid) if valid is not None else np.arange(len(hashes))
    n_bands = max_distance + 1
    edges = np.linspace(0, 64, n_bands + 1).astype(int)
    found = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        keys = (hashes[index] >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, len(sorted_keys)])
        for start, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
            members = index[order[start : start + min(size, MAX_BUCKET)]]
            h = hashes[members]
            a, b = np.triu_indices(len(members), k=1)
            close = popcount64(h[a] ^ h[b]) <= max_distance
            if close.any():
                found.append(np.stack([members[a[close]], members[b[close]]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.sort(np.concatenate(found), axis=1)
    return np.unique(pairs, axis=0)


class DisjointSets:
    """Union-find over ``n`` items: groups of duplicates that must share a split."""

    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)  # the earliest item stays the group's root

    def roots(self) -> np.ndarray:
        """The group root of every item."""
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)
