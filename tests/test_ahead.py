"""The data stage in a forked child (imgcls/train/ahead.py): results and errors come back as
if the function had run in the caller; it forks only before Keras is imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from imgcls.train.ahead import Ahead

# Runs in a fresh interpreter: the test process has imported Keras, where Ahead never forks.
CHILD_SIDE = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from imgcls.errors import ImgclsError
    from imgcls.train.ahead import Ahead

    print("before")  # buffered (stdout is a pipe): the child must not write it again
    def work(n, sizes):
        rng = np.random.default_rng(n)
        arrays = {s: rng.integers(0, 255, (s, 8, 8, 3), dtype=np.uint8) for s in sizes}
        return {"pid": os.getpid(), "arrays": arrays, "labels": np.arange(n) % 3, "note": "ok"}

    def fails(kind):
        if kind == "user":
            raise ImgclsError("DATA x: no images. Received: x")
        return {}["missing"]

    with Ahead(work, 5, (3, 1000)) as ahead:
        assert ahead.forked
        got = ahead.result()
    want = work(5, (3, 1000))
    assert got["pid"] != os.getpid(), "ran in the parent"
    for s in (3, 1000):
        np.testing.assert_array_equal(got["arrays"][s], want["arrays"][s])
    np.testing.assert_array_equal(got["labels"], want["labels"])
    big = got["arrays"][1000]
    assert not big.flags.owndata and big.flags.writeable  # a view of the shared mapping
    with Ahead(fails, "user") as ahead:
        try:
            ahead.result()
        except ImgclsError as e:
            assert str(e) == "DATA x: no images. Received: x", e
    with Ahead(fails, "bug") as ahead:
        try:
            ahead.result()
        except KeyError as e:
            assert "in the data stage's child process" in e.__notes__[0], e.__notes__
    sys.modules["imgcls.train.ahead"].SHARED_BYTES = 4096  # too small for the result: the parent runs it itself
    with Ahead(work, 5, (3, 1000)) as ahead:
        got = ahead.result()
    assert got["pid"] == os.getpid() and got["arrays"][1000].flags.owndata
    left = Ahead(work, 1, (2,))
    left.cancel()  # the parent failed before it asked: the child is stopped and reaped
    try:
        os.waitpid(-1, os.WNOHANG)
        raise AssertionError("a child was left running")
    except ChildProcessError:
        pass
    print("fine")
    """
)


def test_results_and_errors_come_back_from_the_child():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered
    r = subprocess.run([sys.executable, "-c", CHILD_SIDE], capture_output=True, text=True,
                       env=env, timeout=60)  # fmt: skip
    assert r.returncode == 0 and r.stdout.split() == ["before", "fine"], (r.stdout, r.stderr)


def test_it_runs_in_the_caller_once_keras_is_imported():
    import keras  # noqa: F401

    calls = []
    ahead = Ahead(lambda x: calls.append(x) or x * 2, 21)
    assert not ahead.forked and not calls  # nothing ran yet: it runs when asked
    assert ahead.result() == 42 and calls == [21]
