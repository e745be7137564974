"""imgcls tune over several hosts: a chief serving KerasTuner's oracle and two workers, on
loopback (in its own file so that pytest-xdist runs it beside the other search tests)."""

from __future__ import annotations

import json
import socket
import subprocess

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
    assert sorted(ran["w1"] + ran["w2"]) == ["trial_0", "trial_1", "trial_2", "trial_3"]
    trials = _trials(tmp_path / "chief")  # the chief's record holds every worker's trials
    assert [t["status"] for t in trials] == ["completed"] * 4
    record = json.loads((tmp_path / "chief" / "tune.json").read_text())
    assert record["test"]["reads"] == 1 and (tmp_path / "chief" / "best" / "model.keras").is_file()
    assert not (tmp_path / "chief" / "trials").exists()  # the chief trained only best/
