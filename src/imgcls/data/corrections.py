"""Corrections to a data set's labels, kept beside it; the images themselves are never touched.

A person's decisions about their data (this cat is a dog, that file is junk) are appended, one
row each, to ``DATA/.imgcls/corrections.csv``::

    path,digest,action,label,reason,time
    cats/013.jpg,9f2c...,relabel,dogs,suspected wrong label,2026-12-04T18:30:12Z

- ``path``: the image as DATA names it (relative to the folder, like ``imgcls prepare``), or
  the same file named otherwise (a relative path starts at the folder whose ``.imgcls/`` holds
  the file, so a folder's decisions also find its images in a prepared folder's manifest);
- ``digest``: the sha256 of the file's bytes when the decision was made;
- ``action``: ``relabel`` (to ``label``), ``exclude``, ``keep`` (as it is), ``add`` (an image
  from outside the data set, labelled ``label``: ``imgcls review --label``; its path absolute
  or relative to DATA), or ``undo`` (takes back that path's previous decision);
- ``reason`` and ``time`` (ISO 8601): what prompted it and when; not read back.

The file is a log, replayed in order: the last decision about a path wins and ``undo`` steps
back one. Every command that reads a folder (``prepare``, ``train``, ``evaluate``, ``tune``)
applies it through :func:`load_source` (``--corrections FILE`` applies another, to a CSV
manifest too): relabelled images take their new class, excluded ones are left out, added ones
join the training split. A decision whose file has changed since (its digest no longer
matches) is ignored with a warning naming the file; a run records how many were applied and a
digest of them, so it says which version of the labels it learned. Nothing in DATA is moved,
renamed or deleted.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.errors import check
from imgcls.io import open_csv

COLUMNS = ("path", "digest", "action", "label", "reason", "time")
ACTIONS = ("relabel", "exclude", "keep", "undo", "add")
FOLDER = ".imgcls"  # inside DATA; passed over when DATA is listed
FILE_NAME = "corrections.csv"


@dataclass(frozen=True)
class Correction:
    """One decision about one image (a row of the file; ``row`` counts the header as 1)."""

    row: int
    path: str
    digest: str
    action: str
    label: str = ""


def default_file(data: str | Path) -> Path:
    """Where the corrections of folder ``data`` live: ``data/.imgcls/corrections.csv``."""
    return Path(data) / FOLDER / FILE_NAME


def read_corrections(file: str | Path, class_names: list[str]) -> list[Correction]:
    """The decisions in force, one per path, after replaying ``file`` in order.

    Raises:
        ImgclsError: a malformed row, an unknown action or an unknown class, naming the row.
    """
    file = Path(file)
    stacks: dict[str, list[Correction]] = {}
    with open_csv(file) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        check(
            header is not None and tuple(header[:4]) == COLUMNS[:4],
            f"{file} row 1: the header must be {','.join(COLUMNS)}. Received: {header}",
        )
        for row_number, fields in enumerate(reader, start=2):
            if not any(field.strip() for field in fields):
                continue  # a blank line
            stacks_push(stacks, parse_row(file, row_number, fields, class_names))
    return [stack[-1] for stack in stacks.values() if stack]


def parse_row(file: Path, n: int, fields: list[str], class_names: list[str]) -> Correction:
    """One row as a :class:`Correction`; a one-line error naming the row otherwise."""
    where = f"{file} row {n}"
    check(
        len(fields) >= 4,
        f"{where}: expected the columns {','.join(COLUMNS)}. Received: {','.join(fields)}",
    )
    path, digest, action, label = (x.strip() for x in fields[:4])
    check(bool(path), f"{where}: `path` is empty")
    check(
        action in ACTIONS,
        f"{where}: `action` must be one of {', '.join(ACTIONS)}. Received: action={action!r}",
    )
    if action in ("relabel", "add"):
        check(
            label in class_names,
            f"{where}: `label` must be one of the classes ({', '.join(class_names)}). "
            f"Received: label={label!r}",
        )
    check(
        action == "undo" or len(digest) == 64,
        f"{where}: `digest` must be the sha256 of the file (64 hex digits). Received: {digest!r}",
    )
    return Correction(n, path, digest, action, label)


def stacks_push(stacks: dict[str, list[Correction]], c: Correction) -> None:
    """Replay one decision: ``undo`` takes back the path's previous one."""
    stack = stacks.setdefault(c.path, [])
    if c.action == "undo":
        if stack:
            stack.pop()
    else:
        stack.append(c)


def apply_corrections(images, file: str | Path):
    """``images`` (an :class:`~imgcls.data.sources.ImageSet` of files) with the decisions of
    ``file`` applied; the set's ``corrections`` records what was applied.

    Raises:
        ImgclsError: a bad row (see :func:`read_corrections`), a path that is not in DATA, or an
            added image that does not exist or is already in DATA.
    """
    file = Path(file)
    decisions = read_corrections(file, images.class_names)
    position = {image_id: i for i, image_id in enumerate(images.ids)}
    files = {os.path.abspath(p): i for i, p in enumerate(images.paths or [])}
    labels = images.labels.copy()
    keep = np.ones(len(images), dtype=bool)
    applied, added, ignored = [], [], 0
    for c in decisions:
        i = position.get(c.path)
        if i is None:  # the same file named another way (a prepared folder lists it absolute)
            i = files.get(os.path.abspath(_data_root(images, file) / Path(c.path).expanduser()))
        if c.action == "add":
            check(
                i is None,
                f"{file} row {c.row}: `path` {c.path} is already an image of this data set; "
                "relabel it instead of adding it",
            )
            path = _added_path(images, file, c)
        else:
            check(
                i is not None,
                f"{file} row {c.row}: `path` {c.path} is not an image of this data set "
                f"({images.source})",
            )
            path = images.paths[i]
        if c.action == "keep":
            continue
        if not _unchanged(path, c, file):
            ignored += 1
            continue
        if c.action == "relabel":
            labels[i] = images.class_names.index(c.label)
        elif c.action == "exclude":
            keep[i] = False
        else:
            added.append((c, path))
        applied.append(f"{c.path}\t{c.digest}\t{c.action}\t{c.label}")
    corrected = dataclasses.replace(images, labels=labels).subset(keep)
    if added:
        corrected = _with_additions(corrected, added)
    corrected.corrections = {
        "file": str(file.resolve()),
        "applied": len(applied),
        "ignored": ignored,
        "relabelled": int((labels != images.labels).sum()),
        "excluded": int((~keep).sum()),
        "added": len(added),
        "digest": hashlib.sha256("\n".join(sorted(applied)).encode()).hexdigest(),
    }
    return corrected


def _data_root(images, file: Path) -> Path:
    """Where a row's relative path starts: the folder whose ``.imgcls/`` holds ``file`` (the
    folder that was reviewed), else DATA's folder (a manifest's own folder)."""
    if file.parent.name == FOLDER:
        return file.parent.parent
    root = Path(images.source)
    return root if root.is_dir() else root.parent


def _added_path(images, file: Path, c: Correction) -> str:
    """The file an ``add`` row names (relative paths start at :func:`_data_root`); it must
    exist."""
    path = _data_root(images, file) / Path(c.path).expanduser()
    check(path.is_file(), f"{file} row {c.row}: the added image {c.path} does not exist")
    return os.path.abspath(path)


def _unchanged(path: str, c: Correction, file: Path) -> bool:
    """Whether ``path`` still has the digest ``c`` was decided on (warns when it does not)."""
    from imgcls.data.hashing import sha256_file

    if sha256_file(path) == c.digest:
        return True
    print(f"imgcls: warning: {path} changed after it was reviewed ({file} row {c.row}); "
          f"its correction ({c.action}) is ignored", file=sys.stderr)  # fmt: skip
    return False


def _with_additions(images, added: list[tuple[Correction, str]]):
    """``images`` and the ``add`` rows' images after them, in the training split when the
    data has its own splits (else the split is drawn for them as for the others). A prepared
    folder's pixel cache does not hold them, so the set is decoded from its files."""
    names = images.class_names
    n = len(added)
    return dataclasses.replace(
        images,
        labels=np.concatenate([images.labels, [names.index(c.label) for c, _ in added]]).astype(
            np.int32
        ),
        ids=[*images.ids, *(c.path for c, _ in added)],
        paths=[*images.paths, *(path for _, path in added)],
        splits=None if images.splits is None else np.concatenate([images.splits, ["train"] * n]),
        cache=None,
        cache_rows=None,
    )


def append_decision(
    file: str | Path, path: str, digest: str, action: str, label: str = "", reason: str = ""
) -> None:
    """Append one decision to ``file`` (created with its header first) and fsync it: one
    ``write`` of one line, so a crash leaves the file as it was or with the whole row."""
    import datetime
    import io

    from imgcls.io import atomic_path

    check(action in ACTIONS, f"`action` must be one of {', '.join(ACTIONS)}. Received: {action!r}")
    file = Path(file)
    if not file.is_file():
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(file) as tmp:
            Path(tmp).write_text(",".join(COLUMNS) + "\n", encoding="utf-8")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow([path, digest, action, label, reason, now])
    fd = os.open(file, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.getvalue().encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def export_corrected(images, out: str | Path) -> int:
    """Write ``images`` (corrections applied) as ``out/[split/]<class>/<file>``: hard links where
    the file system allows, copies elsewhere. Returns the number of files. ``out`` must not
    exist (nothing is ever overwritten)."""
    import shutil

    out = Path(out)
    check(not out.exists(), f"--export {out} already exists; name a new folder")
    names = images.class_names
    for k, (source, label) in enumerate(zip(images.paths, images.labels, strict=True)):
        split = images.splits[k] if images.splits is not None else ""
        target = out / split / names[label] / Path(source).name
        if target.exists():  # two classes' files of one name met in a relabelled class
            target = target.with_name(f"{k}-{target.name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    return len(images)
