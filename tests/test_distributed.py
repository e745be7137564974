"""Data-parallel training over two processes (JAX, Keras' distribution API) on loopback.

The same command form starts each process (``--coordinator HOST:PORT --num-processes N
--process-id I``); each feeds its half of every global batch, and the result must match one
process training on the same global batches. Tolerance: the gradients are summed across
processes in another order than within one, so float32 rounding differs from the first step
(~1e-7 relative) and Adam's division by the root of its second moment carries it on; after a
dozen steps the weights agree to about 1e-6, and 1e-5 leaves room without hiding a real
difference (a wrong shard or a missed all-reduce moves weights by 1e-2 or more).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import write_folder
from tests.test_backends import TINY, final_weights

pytestmark = pytest.mark.skipif(not importlib.util.find_spec("jax"), reason="needs jax")
TOLERANCE = 1e-5


def start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, KERAS_BACKEND="jax")
    return subprocess.Popen(
        [sys.executable, "-m", "imgcls", "train", *args, "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.mark.slow  # ~65 s of three training processes on 2 cores (make test's 10 minutes)
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    data = write_folder(tmp_path / "data", per_class=16)
    common = [str(data), "--epochs", "2", "--seed", "3", *TINY]
    finish(start(*common, "--out", str(tmp_path / "one")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    procs = [
        start(*common, "--out", str(tmp_path / "two"), *job, "--process-id", str(i))
        for i in range(2)
    ]
    for proc in procs:
        finish(proc)
    two = tmp_path / "two"
    assert (two / "model.keras").is_file() and len(list((two / "checkpoints").glob("*.npz"))) >= 2
    metrics = json.loads((two / "bundle.json").read_text())["metrics"]
    assert (metrics["processes"], metrics["devices"]) == (2, 2)  # a real job, not two copies
    for a, b in zip(final_weights(tmp_path / "one"), final_weights(two), strict=True):
        np.testing.assert_allclose(b, a, atol=TOLERANCE, rtol=0)


@pytest.mark.slow  # 26 s
def test_a_time_budget_stops_every_process_at_the_same_step(tmp_path):
    """--max-time in a job: process 0's clock, broadcast each step, decides for all (with its
    own clock each, one process would stop and the other wait forever in an all-reduce)."""
    data = write_folder(tmp_path / "data", per_class=16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    run = tmp_path / "two"
    args = [str(data), "--epochs", "500", "--max-time", "0.1", "--out", str(run), *TINY, *job]
    procs = [start(*args, "--process-id", str(i)) for i in range(2)]
    for proc in procs:
        finish(proc)
    metrics = json.loads((run / "bundle.json").read_text())["metrics"]
    assert metrics["stopped"] == "max_time" and metrics["processes"] == 2
    assert metrics["epochs_run"] < 500  # (0 under load: the deadline can fall in epoch 1)


@pytest.mark.parametrize(
    "backend, coordinator, message",
    [
        ("torch", "127.0.0.1:1", "needs the jax backend"),
        ("jax", "nowhere", "`coordinator` must be HOST:PORT"),
    ],
)
def test_a_job_on_another_backend_or_without_its_coordinator_is_one_line(
    backend, coordinator, message, tmp_path
):
    data = write_folder(tmp_path / "data", per_class=4)
    r = subprocess.run(
        [sys.executable, "-m", "imgcls", "train", str(data), "--out", str(tmp_path / "r"),
         "--coordinator", coordinator, "--num-processes", "2", "--process-id", "0"],
        capture_output=True, text=True, env=dict(os.environ, KERAS_BACKEND=backend), timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and message in r.stderr.splitlines()[-1]
