"""imgcls tune over several hosts: a chief serving KerasTuner's oracle and two workers, on
loopback (in its own file so that pytest-xdist runs it beside the other search tests)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.test_tune import SPACE, _trials, _tune_cmd

pytest.importorskip("keras_tuner")


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SPACE))
    return path


@pytest.mark.slow  # make test-slow: ~2 min of subprocesses
def test_a_chief_and_two_workers_on_loopback_run_one_search(space_file, tmp_path):
    """KerasTuner's chief/worker mode: workers pull trials from the chief's oracle over gRPC."""
    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    chief = subprocess.Popen(
        [*_tune_cmd(tmp_path / "chief", space_file), "--chief", address],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    workers = [
        subprocess.Popen(
            [*_tune_cmd(tmp_path / name, space_file), "--worker", address, "--worker-id", name],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in ("w1", "w2")
    ]
    for proc in (*workers, chief):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    ran = {
        name: sorted(p.name for p in (tmp_path / name / "trials").glob("trial_*") if p.is_dir())
        for name in ("w1", "w2")
    }
    assert all(ran.values()), ran  # both workers trained
    assert sorted(ran["w1"] + ran["w2"]) == ["trial_0", "trial_1", "trial_2"]
    trials = _trials(tmp_path / "chief")  # the chief's record holds every worker's trials
    assert [t["status"] for t in trials] == ["completed"] * 3
    record = json.loads((tmp_path / "chief" / "tune.json").read_text())
    assert record["test"]["reads"] == 1 and (tmp_path / "chief" / "best" / "model.keras").is_file()
    assert not (tmp_path / "chief" / "trials").exists()  # the chief trained only best/


@pytest.mark.slow  # make test-slow: ~1 min of subprocesses each
@pytest.mark.parametrize("worker_dies", [True, False], ids=["both-killed", "chief-killed"])
def test_a_chief_killed_mid_search_resumes_and_finishes(worker_dies, space_file, tmp_path):
    """SIGKILL the chief (and its worker) once a trial has ended and the next is training:
    `--resume DIR --chief` (and `--resume DIR --worker`) finish the same search with no trial
    run twice. A killed worker's trial continues from its checkpoint; a worker left running
    waits for the chief to come back and reports its trial to the new one."""
    import os
    import signal
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    chief_dir, worker_dir = tmp_path / "chief", tmp_path / "w1"
    chief = subprocess.Popen([*_tune_cmd(chief_dir, space_file), "--chief", address])
    worker = subprocess.Popen(
        [*_tune_cmd(worker_dir, space_file), "--worker", address, "--worker-id", "w1"]
    )
    oracle = chief_dir / "oracle" / "oracle.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # one trial ended, the next has a checkpoint
        ended = oracle.is_file() and json.loads(oracle.read_text()).get("end_order")
        if ended and list(worker_dir.glob("trials/trial_1/checkpoints/ckpt-*.npz")):
            break
        time.sleep(0.2)
    for proc in (worker, chief) if worker_dies else (chief,):
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (worker_dir / "trials" / "trial_1" / "trial_info.json").exists()  # cut mid-trial

    resume = [sys.executable, "-m", "imgcls", "tune", "--resume"]
    chief = subprocess.Popen(
        [*resume, str(chief_dir), "--chief", address], stderr=subprocess.PIPE, text=True
    )
    if worker_dies:
        worker = subprocess.Popen(
            [*resume, str(worker_dir), "--worker", address], stderr=subprocess.PIPE, text=True
        )
    for proc in (worker, chief):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (err or "")[-2000:]
    log = (worker_dir / "trials" / "trial_1.log").read_text()
    assert ("resumed from" in log) == worker_dies  # else it trained on, uninterrupted
    trials = _trials(chief_dir)
    assert [t["trial"] for t in trials] == ["1", "2", "3"]
    assert [t["status"] for t in trials] == ["completed"] * 3
    ended = json.loads(oracle.read_text())["end_order"]
    assert sorted(ended) == sorted(set(ended)) and len(ended) == 3  # each trial ended once
    record = json.loads((chief_dir / "tune.json").read_text())
    assert record["test"]["reads"] == 1 and (chief_dir / "best" / "model.keras").is_file()
