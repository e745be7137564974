"""Atomic file writes: a reader never sees a half-written file.

Every file a user relies on (bundle, checkpoint, manifest, report) is written to a temporary
file in the same folder, flushed and fsynced, then renamed over the target. A crash at any
moment leaves either the old file or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    Use it for writers that want a file name (``model.save``, ``np.savez``)::

        with atomic_path("run/model.keras") as tmp:
            model.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    os.fchmod(
        fd, 0o666 & ~_umask()
    )  # mkstemp makes 0600; a report or model should read like any file
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing; rename it over ``path`` when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterator | list) -> None:
    """Write a CSV with ``header`` and ``rows``, atomically."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def read_table_file(path: str | os.PathLike, option: str, what: str) -> dict[str, Any]:
    """The table in a JSON or TOML file (by its suffix) given as ``option`` (``--config``,
    ``--space``), holding ``what``.

    Raises:
        ImgclsError: the file is missing, not valid JSON/TOML, or not one table/object.
    """
    from imgcls.errors import ImgclsError, check

    path = Path(path)
    check(path.is_file(), f"`{option}` file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as e:
        kind = path.suffix.lstrip(".").upper() or "JSON"
        raise ImgclsError(f"`{option}` file {path} is not valid {kind}: {e}") from None
    check(isinstance(data, dict), f"`{option}` file {path} must hold a table/object of {what}")
    return data


@contextlib.contextmanager
def open_csv(path: str | os.PathLike, what: str | None = None) -> Iterator[IO]:
    """``path`` opened for the ``csv`` module as UTF-8 text (a byte-order mark allowed); a
    file that is not UTF-8 fails as one line naming it (``what``, else the path) instead of
    a ``UnicodeDecodeError`` from the middle of a read.

    Raises:
        ImgclsError: the file is not UTF-8 text.
    """
    from imgcls.errors import ImgclsError

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            yield f
    except UnicodeDecodeError as e:
        raise ImgclsError(
            f"{what or path}: must be UTF-8 text (a CSV). Received: byte "
            f"0x{e.object[e.start]:02x} at offset {e.start}; save it as UTF-8"
        ) from None


def cache_root() -> Path:
    """Where imgcls keeps what it can recompute (converted weights, decoded pixels, exported
    frozen networks): ``$IMGCLS_CACHE``, else ``~/.cache/imgcls``."""
    return Path(os.path.expanduser(os.environ.get("IMGCLS_CACHE") or "~/.cache/imgcls"))


def peak_rss_bytes() -> int | None:
    """The most resident memory this process has held so far (its high-water mark); ``None``
    where the platform does not say (Windows)."""
    import sys

    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS counts bytes, Linux KiB


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: ``/proc``); ``None`` where unknown."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class Timeline:
    """Where a command's wall time went: seconds per stage, in the order the stages ran.

    :meth:`mark` ends a stage at now (a stage marked again accumulates). ``since_process_start``
    starts the clock when the process started (interpreter start-up and imports count), as the
    command line does; otherwise at construction.
    """

    def __init__(self, since_process_start: bool = False):
        self.stages: dict[str, float] = {}
        age = process_age_s() if since_process_start else None
        self._last = time.perf_counter() - (age or 0.0)

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(self.stages.get(stage, 0.0) + now - self._last, 2)
        self._last = now

    def line(self) -> str:
        """``start-up 3.9 s, data 4.1 s, ...: 126.5 s in all``."""
        parts = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in self.stages.items())
        return f"{parts}: {sum(self.stages.values()):.1f} s in all"
