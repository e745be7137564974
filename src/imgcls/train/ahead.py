"""Reading the data while Keras imports: the data stage in a forked child process.

Importing TensorFlow and Keras is 3.5-4 s of a second run's 5.6 s to the first step, and it
holds the GIL: a thread reading the data beside it gained nothing (measured,
docs/BENCHMARKS.md). :class:`Ahead` forks a child before the import; the child runs the data
stage on the other core and sends its result back. NumPy arrays do not go through the pipe:
pickle protocol 5 hands their buffers out of band, the child copies them into an anonymous
shared mapping made before the fork, and the parent's arrays are views of it (no copy).

It forks only where that is safe and pays: on Linux, before Keras or a backend is imported,
with no other Python thread running. Elsewhere (a Python session that already imported Keras,
the tests) the function simply runs in the caller when the result is asked for.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from imgcls.errors import ImgclsError

# Address space for the arrays the child sends back; untouched pages cost nothing. Decoded sets
# above the pixel cache's IN_MEMORY_MAX_BYTES (1 GiB) come back as views of the cache file,
# not pixels; for a result that still does not fit, the parent runs the function itself (a
# copy through the pipe would hold it twice in memory).
SHARED_BYTES = 2 << 30
ALIGN = 64  # bytes: each array starts on a cache line
BACKEND_MODULES = ("keras", "tensorflow", "jax", "torch")  # their threads make fork unsafe


def can_fork() -> bool:
    """Whether forking now is safe and worth it: Linux, no backend imported, one thread."""
    return (
        sys.platform.startswith("linux")
        and not any(m in sys.modules for m in BACKEND_MODULES)
        and threading.active_count() == 1
    )


class Ahead:
    """``fn(*args, **kwargs)`` started now in a forked child (see the module docstring);
    :meth:`result` waits for it and returns its value or raises its exception.

    Use as a context manager: leaving the block before :meth:`result` was asked for (an error
    in the parent) stops the child.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        self._call = (fn, args, kwargs)
        self._pid: int | None = None
        if not can_fork():
            return
        try:
            self._shared = mmap.mmap(-1, SHARED_BYTES)
        except (OSError, ValueError):  # no address space for it (a ulimit): run it here
            return
        read, write = os.pipe()
        sys.stdout.flush()  # else the child would write the parent's buffered output again
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: run, send, leave without running the parent's exit handlers
            os.close(read)
            _child(write, self._shared, fn, args, kwargs)
        os.close(write)
        self._pid, self._read = pid, read

    @property
    def forked(self) -> bool:
        """Whether the function runs in a child (else :meth:`result` runs it here)."""
        return self._pid is not None

    def result(self) -> Any:
        """The function's return value; its exception, raised here, if it failed (once)."""
        if self._call is None:
            raise RuntimeError("Ahead.result() was already taken")
        fn, args, kwargs = self._call
        self._call = None
        if self._pid is None:
            return fn(*args, **kwargs)
        chunks = []
        try:
            while chunk := os.read(self._read, 1 << 20):
                chunks.append(chunk)
        finally:
            self._reap()
        if not chunks:
            raise RuntimeError("the data stage's child process died without a result")
        ok, payload, spans = pickle.loads(b"".join(chunks))
        if ok is None:  # too large for the shared mapping: run it here, as without a child
            return fn(*args, **kwargs)
        view = memoryview(self._shared)
        value = pickle.loads(payload, buffers=[view[o : o + n] for o, n in spans])
        if not ok:
            raise value
        return value

    def cancel(self) -> None:
        """Stop the child if it still runs (nothing it made is kept)."""
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, 9)
            self._reap()

    def __enter__(self) -> Ahead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def _reap(self) -> None:
        os.close(self._read)
        os.waitpid(self._pid, 0)
        self._pid = None


def _child(write: int, shared: mmap.mmap, fn, args, kwargs) -> None:
    """Run ``fn`` and write ``(ok, payload, spans)`` to ``write``; never returns."""
    code = 0
    try:
        try:
            message = _pack(True, fn(*args, **kwargs), shared)
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent
            code = 1
            message = _pack(False, _portable(e), shared)
        with os.fdopen(write, "wb") as pipe:
            pipe.write(message)
    except BaseException:  # noqa: BLE001 - the parent sees the pipe close without a result
        code = 2
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _pack(ok: bool, value: Any, shared: mmap.mmap) -> bytes:
    """Pickle ``value``, its arrays' buffers copied into ``shared``; ``ok=None`` (run it in
    the parent) if they do not fit."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    spans, offset = [], 0
    for buffer in buffers:
        raw = buffer.raw()
        if offset + raw.nbytes > len(shared):
            return pickle.dumps((None, None, None))
        shared[offset : offset + raw.nbytes] = raw
        spans.append((offset, raw.nbytes))
        offset += -(-raw.nbytes // ALIGN) * ALIGN
    return pickle.dumps((ok, payload, spans))


def _portable(error: BaseException) -> BaseException:
    """``error`` if it pickles; an unexpected one carries the child's traceback as a note."""
    if not isinstance(error, ImgclsError):
        error.add_note("in the data stage's child process:\n" + "".join(
            traceback.format_exception(error)))  # fmt: skip
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - an exception that cannot travel becomes its text
        return RuntimeError("".join(traceback.format_exception(error)))
