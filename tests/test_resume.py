"""Crash-proof training: SIGKILL at any moment, resume, and end with the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imgcls.cli import main
from tests.conftest import write_folder

TRAIN = [
    "--model",
    "classic",
    "--epochs",
    "3",
    "--batch-size",
    "8",
    "--image-size",
    "16",
    "16",
    "--seed",
    "1",
    "--model-arg",
    "filters=[16,32]",
    "--model-arg",
    "dense_units=64",
    "--checkpoint-every",
    "2",
    "--quiet",
]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def start(data: Path, run: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "imgcls", "train", str(data), "--out", str(run), *TRAIN, *extra]
    return subprocess.Popen(
        args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def weights(run: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(run / "model.keras", compile=False).get_weights()


def wait_for(predicate, timeout: float = 120.0, every: float = 0.001) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """An uninterrupted run and its final weights."""
    base = tmp_path_factory.mktemp("resume")
    data = write_folder(base / "data", per_class=30)
    proc = start(data, base / "ref")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return data, weights(base / "ref")


@pytest.fixture(scope="module")
def reference_run(reference, tmp_path_factory) -> Path:
    """The finished reference run's folder (resumes of it are refused, so it never changes)."""
    return reference[0].parent / "ref"


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)  # bit-identical on CPU


def files(folder: Path, prefix: str) -> list[Path]:
    """Files in ``folder`` whose names start with ``prefix``, sorted (none if it does not exist)."""
    return (
        sorted(p for p in folder.iterdir() if p.name.startswith(prefix)) if folder.is_dir() else []
    )


def kill_when(proc: subprocess.Popen, predicate, every: float = 0.001) -> bool:
    """SIGKILL ``proc`` as soon as ``predicate()`` holds; return whether it did before the timeout."""
    seen = wait_for(predicate, every=every)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return seen


def resume(run: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgcls", "train", "--resume", str(run), "--quiet"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def resume_matches(run: Path, ref: list[np.ndarray]) -> subprocess.CompletedProcess:
    """Resume ``run``; it must finish with the reference weights. Returns the finished process."""
    r = resume(run)
    assert r.returncode == 0, r.stderr
    assert_same(weights(run), ref)
    return r


@pytest.mark.slow  # ~11 s; every resume below must also end on the reference's weights
def test_same_seed_gives_same_weights(reference, tmp_path):
    data, ref = reference
    proc = start(data, tmp_path / "again")
    assert proc.wait(timeout=300) == 0
    assert_same(weights(tmp_path / "again"), ref)


@pytest.mark.slow  # ~25 s; the truncated-checkpoint test below also kills mid-run and resumes
def test_sigkill_mid_epoch_then_resume(reference, tmp_path):
    data, ref = reference
    run = tmp_path / "run"
    proc = start(data, run)
    assert kill_when(proc, lambda: files(run / "checkpoints", "ckpt-"))
    assert not (run / "model.keras").exists()  # it really died before finishing
    resume_matches(run, ref)


def test_sigkill_during_checkpoint_write_then_resume(reference, tmp_path):
    data, ref = reference
    run = tmp_path / "run"
    proc = start(data, run)
    ckpts = run / "checkpoints"
    # A good checkpoint exists first; then kill during a later write.
    assert wait_for(lambda: files(ckpts, "ckpt-"))
    if not kill_when(proc, lambda: files(ckpts, ".tmp-"), every=0.0002):
        pytest.skip("the checkpoint write was too quick to catch in flight on this machine")
    resume_matches(run, ref)
    assert not files(ckpts, ".tmp-")  # leftovers cleaned


def test_truncated_latest_checkpoint_falls_back(reference, tmp_path):
    data, ref = reference
    run = tmp_path / "run"
    proc = start(data, run)
    ckpts = run / "checkpoints"
    assert kill_when(proc, lambda: len(files(ckpts, "ckpt-")) >= 2)
    newest = files(ckpts, "ckpt-")[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write
    r = resume_matches(run, ref)
    assert "damaged" in r.stderr and newest.name in r.stderr


def test_second_trainer_on_same_run_is_refused(reference, tmp_path):
    data, _ = reference
    run = tmp_path / "run"
    proc = start(data, run, "--epochs", "500")  # long enough to still hold the lock
    try:
        assert wait_for(lambda: (run / "run.json").exists())
        r = resume(run)
        assert r.returncode == 2
        assert "being trained by another process" in r.stderr
    finally:
        proc.kill()
        proc.wait()


def test_resume_with_changed_recipe_is_refused(reference, reference_run, capsys):
    before = weights(reference_run)
    assert main(["train", "--resume", str(reference_run), "--lr", "0.5"]) == 2
    assert "`lr` differs from the run's" in capsys.readouterr().err
    assert_same(weights(reference_run), before)  # nothing written


def test_resume_with_changed_data_is_refused(reference, reference_run, capsys):
    data, _ = reference
    (data / "cats" / "000.png").rename(data / "dogs" / "moved.png")
    try:
        assert main(["train", "--resume", str(reference_run)]) == 2
        assert "differs from what run" in capsys.readouterr().err
    finally:
        (data / "dogs" / "moved.png").rename(data / "cats" / "000.png")


def test_fast_recipe_resumes_exactly_from_a_mid_epoch_checkpoint(tmp_path, capsys):
    """The fast recipe's extra state (lookahead weights, alternating flips) survives a resume,
    cut in its second epoch: one of the two that train on downscaled images."""
    import shutil

    import imgcls

    data = write_folder(tmp_path / "data", per_class=20)
    kw = dict(model="fast", epochs=3, batch_size=8, checkpoint_every=5, keep_checkpoints=50)
    ref = imgcls.train(str(data), out=tmp_path / "ref", verbose=True, **kw)
    assert ref.stopped == "completed"
    assert "progressive resizing: epochs 1-2 see the images downscaled" in capsys.readouterr().err
    run = tmp_path / "cut"
    shutil.copytree(tmp_path / "ref", run)
    steps = sorted(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("ckpt-*.npz"))
    cut = next(s for s in steps if s > steps[-1] // 3 and s % (steps[-1] // 3))  # mid-epoch 2
    for p in (run / "checkpoints").glob("ckpt-*.npz"):
        if int(p.stem.split("-")[1]) > cut:
            p.unlink()
    (run / "model.keras").unlink()
    (run / "bundle.json").unlink()
    imgcls.train(out=run, resume=True, verbose=False)
    assert_same(weights(run), weights(tmp_path / "ref"))
