"""Crash-proof checkpoints: atomic writes, newest-good fallback, a lock per run.

A checkpoint is one ``.npz`` file holding every model variable (including BatchNorm
statistics and dropout seed state), every optimizer variable (step count, moments) and the
trainer's state as JSON (epoch, step, best metric, early-stopping counter, history). It is
written to a temporary file, fsynced and renamed, so a crash leaves the previous one intact.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.bundle import RunFolder
from imgcls.errors import ImgclsError
from imgcls.io import TMP_PREFIX, atomic_path


class CheckpointManager:
    """Save and restore the full training state under ``RUN/checkpoints``
    (:class:`~imgcls.bundle.RunFolder` names the files).

    Args:
        run_dir: the run folder.
        keep: how many of the newest checkpoints to keep (the best is kept besides).
    """

    def __init__(self, run_dir: str | Path, keep: int = 2):
        self.folder = RunFolder(run_dir)
        self.dir = self.folder.checkpoints
        self.keep = keep

    def save(self, model, optimizer, state: dict[str, Any], best: bool = False) -> Path:
        """Write a checkpoint for ``state["global_step"]``; prune old ones; optionally the best."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.folder.checkpoint(int(state["global_step"]))
        arrays = _collect(model, optimizer, state)
        try:
            with atomic_path(path) as tmp:
                _write_npz(tmp, arrays)
            if best:
                with atomic_path(self.folder.best_checkpoint) as tmp:
                    _write_npz(tmp, arrays)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ImgclsError(
                    f"disk full while writing checkpoint {path}; the previous checkpoint "
                    f"is intact: free space and run `imgcls train --resume {self.dir.parent}`"
                ) from None
            raise
        self._prune()
        return path

    def checkpoints(self) -> list[Path]:
        """Checkpoints oldest first."""
        return self.folder.checkpoint_files()

    def load_latest(self) -> tuple[Path, dict[str, np.ndarray]] | None:
        """The newest checkpoint that reads back whole; damaged ones are skipped with a warning."""
        for path in reversed(self.checkpoints()):
            try:
                return path, _read_npz(path)
            except (OSError, ValueError, zipfile.BadZipFile, KeyError, EOFError) as e:
                print(
                    f"imgcls: warning: checkpoint {path} is damaged ({type(e).__name__}); "
                    "falling back to the previous one",
                    file=sys.stderr,
                )
        return None

    def clean_temporaries(self) -> None:
        """Remove half-written files a crash left behind."""
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                if p.name.startswith(TMP_PREFIX):
                    p.unlink(missing_ok=True)

    def _prune(self) -> None:
        for old in self.checkpoints()[: -self.keep]:
            old.unlink(missing_ok=True)


def peek_state(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The trainer state stored in a checkpoint, without touching any variable."""
    return json.loads(bytes(arrays["state"]).decode("utf-8"))


def restore(
    model, optimizer, arrays: dict[str, np.ndarray], optimizer_too: bool = True
) -> dict[str, Any]:
    """Assign saved values to the model's (and optimizer's) variables; return the trainer state."""
    state = peek_state(arrays)
    groups = [("model", model.variables)] + (
        [("optimizer", optimizer.variables)] if optimizer_too else []
    )
    for prefix, variables in groups:
        n = int(state[f"n_{prefix}"])
        if n != len(variables):
            raise ImgclsError(
                f"checkpoint holds {n} {prefix} variables but the {prefix} has {len(variables)}; "
                "was the model or optimizer changed?"
            )
        for i, v in enumerate(variables):
            value = arrays[f"{prefix}_{i:05d}"]
            if tuple(value.shape) != tuple(v.shape):
                raise ImgclsError(
                    f"checkpoint {prefix} variable {v.path} has shape {value.shape}, expected {v.shape}"
                )
            v.assign(value)
    return state


def _collect(model, optimizer, state: dict[str, Any]) -> dict[str, np.ndarray]:
    state = dict(state, n_model=len(model.variables), n_optimizer=len(optimizer.variables))
    arrays = {"state": np.frombuffer(json.dumps(state).encode("utf-8"), dtype=np.uint8)}
    for i, v in enumerate(model.variables):
        arrays[f"model_{i:05d}"] = np.asarray(v.numpy())
    for i, v in enumerate(optimizer.variables):
        arrays[f"optimizer_{i:05d}"] = np.asarray(v.numpy())
    return arrays


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}  # reading every member checks every CRC


class RunLock:
    """An exclusive lock on a run folder, released by the OS even if the process is killed."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        self._created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ImgclsError(
                f"RUN {self.path.parent} is being trained by another process (pid {holder}); "
                "wait for it to finish or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if self._fd is None:
            return
        folder = self.path.parent
        if exc_type is not None and self._created and os.listdir(folder) == [self.path.name]:
            self.path.unlink()  # a run that failed before writing anything leaves no folder
            folder.rmdir()
        os.close(self._fd)  # closing releases the flock
        self._fd = None
