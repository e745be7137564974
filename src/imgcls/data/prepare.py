"""``imgcls prepare``: scan, clean, split and cache an image data set once, before training.

:func:`prepare` reads DATA (any folder or CSV the other commands accept), decodes every file
once in parallel (:mod:`imgcls.data.scan`), leaves out what cannot be used, finds exact and
near duplicates, makes a duplicate-aware stratified split and writes into ``out``:

* ``manifest.csv``: one row per usable image (path, label, split, sha256, size, format, mode);
  ``imgcls train out`` reads it like any CSV manifest and keeps its split;
* ``cache_HxW.npy``: the decoded uint8 pixels, row ``i`` for manifest row ``i``; training at
  that size reads it through a memory map instead of decoding;
* ``report.json`` and ``report.html``: counts per class and split, and every issue found.

Source files are only ever read.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.config import PrepareConfig, SplitSettings, with_overrides
from imgcls.data.duplicates import (
    exact_duplicates,
    mark_leaks,
    near_duplicate_issues,
    near_duplicates,
)
from imgcls.data.hashing import DisjointSets
from imgcls.data.labels import Probabilities
from imgcls.data.scan import UNUSABLE_KINDS, ScanResult, scan_files
from imgcls.data.sizes import default_cache_size
from imgcls.data.sources import SPLIT_NAMES, ImageSet, load_source
from imgcls.data.split import assign_splits
from imgcls.errors import check
from imgcls.io import TMP_PREFIX, write_csv, write_json

IMBALANCE_RATIO = 3.0  # largest class / smallest class above which imbalance is reported
COPY_ROWS = 4096  # cache rows copied per block when compacting the cache
MANIFEST_COLUMNS = ["path", "label", "split", "sha256", "width", "height", "format", "mode", "id"]


@dataclass
class PrepareResult:
    """What :func:`prepare` wrote.

    Attributes:
        out: the prepared folder (pass it to ``imgcls train``).
        report: the content of ``report.json``.
        bad_files: issues of files that cannot be used (unreadable, not an image, too large or small).
        completed: ``False`` when ``on_error="fail"`` found bad files: then only the reports
            were written, no manifest or cache.
    """

    out: Path
    report: dict
    bad_files: list[dict] = field(default_factory=list)
    completed: bool = True

    @property
    def n_usable(self) -> int:
        return int(self.report["n_usable"])


def prepare(
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: PrepareConfig | None = None,
    *,
    probabilities: Probabilities | None = None,
    workers: int | None = None,
    verbose: bool = False,
    **overrides: Any,
) -> PrepareResult:
    """Scan, clean, split and cache DATA into the folder ``out``.

    Args:
        data: a folder per class (optionally with train/val/test) or a CSV manifest.
        out: folder to write manifest.csv, report.json, report.html and the pixel cache into.
        config: a :class:`~imgcls.config.PrepareConfig`; ``overrides`` replace its fields:
            ``image_size`` (default: the size ``imgcls train`` would pick), ``on_error``
            (``"skip"`` leaves bad files out and lists them; ``"fail"`` writes only the reports
            and returns ``completed=False`` when any file is bad), ``val_split``,
            ``test_split`` (unless DATA has its own split), ``seed`` (the split and the
            label-issue folds) and ``label_issues`` (rank suspected mislabelled images with
            cleanlab).
        probabilities: gives the class probabilities for ``label_issues``, e.g.
            ``imgcls.predict.RunProbabilities(run)`` (default: k-fold cross-validation of a
            quick model).
        workers: scanning processes; default: every core.
        verbose: print progress to stderr.

    Returns:
        A :class:`PrepareResult`.

    Raises:
        ImgclsError: bad arguments, DATA unreadable, nothing usable, or a class left empty
            (the reports are still written for the last two).

    Example:
        >>> r = prepare("photos/", out="prepared/")           # doctest: +SKIP
        >>> r.report["issue_counts"]                          # doctest: +SKIP
        {'unreadable': 2, 'exact_duplicate': 5}
    """
    config = with_overrides(config or PrepareConfig(), overrides).validate()
    t0 = time.perf_counter()
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose else (lambda m: None)
    images = load_source(data, corrections=config.corrections)
    check(
        images.paths is not None,
        f"DATA {data} is a built-in data set, already decoded and clean; "
        "prepare reads image files (a folder per class or a CSV manifest)",
    )
    out = _fresh_out(Path(out), images.source)
    size = tuple(config.image_size or default_cache_size(images))
    scratch = out / f"{TMP_PREFIX}scan-{os.getpid()}.u8"
    try:
        log(
            f"scanning {len(images)} files with {workers or os.cpu_count()} processes at {size[0]}x{size[1]}"
        )
        progress = _progress(log) if verbose else None
        scan = scan_files(images.paths, size, str(scratch), workers, progress)
        plan = _plan(images, scan, scratch, size, config, _class_folders(data))
        report = _report(images, plan, size, t0)
        bad = [i for i in report["issues"] if i["kind"] in UNUSABLE_KINDS]
        refused = config.on_error == "fail" and bool(bad)
        problem = None if refused else _fatal_problem(data, report)
        if refused or problem:  # the reports say why; nothing else is written
            _write_reports(out, report, images, plan, size)
            check(problem is None, problem or "")
            return PrepareResult(out, report, bad, completed=False)
        cache = _write_cache(scratch, out, plan.keep, size)
        _write_manifest(out, images, scan, plan)
        if config.label_issues:
            _add_label_issues(report, cache, images, plan, config.seed, probabilities, log)
        report["seconds"] = round(time.perf_counter() - t0, 2)
        _write_reports(out, report, images, plan, size)
        r = report
        log(
            f"{r['n_usable']} usable images of {r['n_files']}; {len(r['issues'])} issues; wrote {out} in {r['seconds']} s"
        )
        return PrepareResult(out, report, bad)
    finally:
        scratch.unlink(missing_ok=True)


def _progress(log):
    """Scanning progress: a line about every 10,000 files."""

    def show(done: int, total: int) -> None:
        if done % 10240 < 128 or done == total:
            log(f"  {done}/{total}")

    return show


def _add_label_issues(report: dict, cache: Path, images: ImageSet, plan, seed: int,
                      probabilities: Probabilities | None, log) -> None:  # fmt: skip
    """Rank suspected mislabelled images among the kept ones into ``report``."""
    from imgcls.data.labels import find_label_issues

    how = f" with {probabilities}" if probabilities else " by cross-validation"
    log("finding label issues" + how)
    found = find_label_issues(
        cache,
        images.labels[plan.keep],
        images.class_names,
        [images.ids[i] for i in plan.keep],
        seed=seed,
        probabilities=probabilities,
        paths=[images.paths[i] for i in plan.keep],
    )
    report["issues"] += found
    report["issue_counts"]["label_issue"] = len(found)


def _fresh_out(out: Path, source: str) -> Path:
    """``out``, created, checked to lie outside DATA, and no longer marked prepared (until the
    report and manifest are rewritten)."""
    root, resolved = Path(source), out.resolve()
    if root.suffix.lower() != ".csv":  # a CSV lists its files; a folder beside it is not a class
        check(
            resolved != root and root not in resolved.parents,
            f"--out {out} lies inside DATA {root}; it would become a class folder. Choose a folder outside DATA",
        )
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", "manifest.csv"):
        (out / stale).unlink(missing_ok=True)
    return out


def _class_folders(data: str | os.PathLike) -> list[str]:
    """Class folder names on disk, including empty ones (load_source only sees folders with images)."""
    root = Path(data)
    if not root.is_dir() or (root / "manifest.csv").is_file():
        return []

    def visible(folder: Path) -> list[Path]:
        return [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]

    subdirs = visible(root)
    if subdirs and all(
        d.name.lower() in SPLIT_NAMES + ("training", "valid", "validation", "testing")
        for d in subdirs
    ):
        return sorted({c.name for d in subdirs for c in visible(d)})
    return [d.name for d in subdirs]


@dataclass
class Plan:
    """What prepare decided: the kept images (indices into DATA), a split per image, issues."""

    keep: np.ndarray
    splits: np.ndarray
    issues: list[dict]


def _plan(
    images: ImageSet,
    scan: ScanResult,
    scratch: Path,
    size: tuple[int, int],
    split: SplitSettings,
    folders: list[str],
) -> Plan:
    """Decide which images are kept, their split, and every issue."""
    ids, labels = images.ids, images.labels
    issues = [dict(i) for i in images.issues]  # "ignored": hidden, system and non-image files
    issues += [{**i, "path": ids[i["index"]]} for i in scan.issues]
    keep = scan.usable.copy()
    sets = DisjointSets(len(images))
    issues += exact_duplicates(images, scan.sha256, keep, sets)
    near = near_duplicates(scan, keep, scratch, size)
    issues += near_duplicate_issues(images, near, sets)
    splits = _split(labels, keep, sets.roots(), images.splits, split)
    if images.splits is not None:  # predefined splits cannot be moved: report leakage
        mark_leaks(issues, near, splits)
    issues += _class_issues(images.class_names, labels[keep], folders)
    for row in issues:
        row.pop("index", None)
    return Plan(np.flatnonzero(keep), splits, issues)


def _class_issues(class_names: list[str], kept_labels: np.ndarray, folders: list[str]) -> list:
    """Classes left empty, class folders with no images, and imbalance."""
    issues = []
    counts = np.bincount(kept_labels, minlength=len(class_names))
    for name, c in zip(class_names, counts, strict=True):
        if c == 0:
            detail = f"class {name} has no usable images left"
            issues.append({"path": name, "kind": "empty_class", "detail": detail})
    for name in sorted(set(folders) - set(class_names)):
        issues.append(
            {"path": name, "kind": "empty_class", "detail": f"folder {name} holds no image files"}
        )
    nonzero = counts[counts > 0]
    if len(nonzero) > 1 and nonzero.max() / nonzero.min() >= IMBALANCE_RATIO:
        big = int(np.argmax(counts))
        small = int(np.argmin(np.where(counts > 0, counts, counts.max() + 1)))
        issues.append(
            {
                "path": class_names[small],
                "kind": "class_imbalance",
                "detail": f"largest class {class_names[big]} has {counts[big]} images, smallest "
                f"{class_names[small]} {counts[small]} ({counts[big] / counts[small]:.1f}x); "
                "train with --class-weight balanced",
            }
        )
    return issues


def _split(
    labels: np.ndarray,
    keep: np.ndarray,
    roots: np.ndarray,
    predefined: np.ndarray | None,
    split: SplitSettings,
) -> np.ndarray:
    """A split per image; images in one duplicate group get the same one."""
    splits = np.full(len(labels), "", dtype="<U5")
    kept = np.flatnonzero(keep)
    if predefined is not None:
        splits[kept] = assign_splits(
            labels[kept], split.val_split, split.test_split, split.seed, predefined[kept]
        )
        return splits
    groups, first, inverse = np.unique(roots[kept], return_index=True, return_inverse=True)
    group_splits = assign_splits(labels[kept[first]], split.val_split, split.test_split, split.seed)
    splits[kept] = group_splits[inverse]
    return splits


def _report(images: ImageSet, plan: Plan, size: tuple[int, int], t0: float) -> dict:
    keep, splits = plan.keep, plan.splits
    counts = {name: {s: 0 for s in ("train", "val", "test")} for name in images.class_names}
    for label, s in zip(images.labels[keep], splits[keep], strict=True):
        counts[images.class_names[label]][s] += 1
    for c in counts.values():
        c["total"] = c["train"] + c["val"] + c["test"]
    issue_counts: dict[str, int] = {}
    for row in plan.issues:
        issue_counts[row["kind"]] = issue_counts.get(row["kind"], 0) + 1
    suggestions = []
    if "class_imbalance" in issue_counts:
        suggestions.append("classes are imbalanced: train with --class-weight balanced")
    if any(k in issue_counts for k in ("conflicting_labels", "near_duplicate", "label_issue")):
        suggestions.append("review the images listed under conflicting_labels and near_duplicate")
    return {
        "data": images.source,
        "image_size": list(size),
        "n_files": len(images),
        "n_usable": int(len(keep)),
        "n_left_out": len(images) - int(len(keep)),
        "class_names": images.class_names,
        "counts": counts,
        "split_counts": {s: int((splits[keep] == s).sum()) for s in ("train", "val", "test")},
        "issue_counts": issue_counts,
        "suggestions": suggestions,
        "issues": plan.issues,
        "cache": f"cache_{size[0]}x{size[1]}.npy",
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _fatal_problem(data: str | os.PathLike, report: dict) -> str | None:
    if report["n_usable"] == 0:
        return f"DATA {data}: none of the {report['n_files']} files is usable; see {report['issue_counts']} in report.json"
    empty = [row["path"] for row in report["issues"] if row["kind"] == "empty_class"]
    if empty:
        return f"DATA {data}: class(es) {', '.join(empty)} have no usable images; add images or remove the folder(s)"
    return None


def _write_cache(scratch: Path, out: Path, keep: np.ndarray, size: tuple[int, int]) -> Path:
    """Copy the kept rows of the scan's raw cache into ``out/cache_HxW.npy``, atomically."""
    target = out / f"cache_{size[0]}x{size[1]}.npy"
    tmp = out / f"{TMP_PREFIX}{target.name}"
    shape = (len(keep), size[0], size[1], 3)
    cache = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    header = cache.offset
    del cache  # unmapped: the rows are written with plain writes, so resident memory stays flat
    row_bytes = size[0] * size[1] * 3
    try:
        with open(scratch, "rb") as src, open(tmp, "r+b") as dst:
            dst.seek(header)
            for start in range(0, len(keep), COPY_ROWS):
                rows = keep[start : start + COPY_ROWS]
                lo, hi = int(rows[0]), int(rows[-1]) + 1
                src.seek(lo * row_bytes)
                block = np.frombuffer(src.read((hi - lo) * row_bytes), np.uint8).reshape(
                    hi - lo, row_bytes
                )
                dst.write(block[rows - lo].tobytes())
            dst.flush()
            os.fsync(dst.fileno())
        for old in out.glob(
            "cache_*x*.npy"
        ):  # a cache at another size belongs to an older manifest
            old.unlink()
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _write_manifest(out: Path, images: ImageSet, scan: ScanResult, plan: Plan) -> None:
    rows = (
        [
            images.paths[i],
            images.class_names[images.labels[i]],
            plan.splits[i],
            scan.sha256[i].tobytes().hex(),
            int(scan.width[i]),
            int(scan.height[i]),
            scan.format[i],
            scan.mode[i],
            images.ids[i],
        ]
        for i in plan.keep
    )
    write_csv(out / "manifest.csv", MANIFEST_COLUMNS, rows)


def _write_reports(
    out: Path, report: dict, images: ImageSet, plan: Plan, size: tuple[int, int]
) -> None:
    from imgcls.data.prepare_report import write_html

    paths = {images.ids[i]: images.paths[i] for i in range(len(images))}
    write_html(out / "report.html", report, paths)
    write_json(out / "report.json", report)
