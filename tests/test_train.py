"""Training behaviour a user relies on: stopping rules, time budgets, full disks, class weights."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

import imgcls
from imgcls.errors import ImgclsError
from imgcls.train import checkpoint
from tests.conftest import write_folder

TINY = dict(
    model="classic",
    batch_size=8,
    image_size=(16, 16),
    verbose=False,
    model_args={"filters": (8, 16), "dense_units": 16},
)


@pytest.fixture
def data(tmp_path):
    return write_folder(tmp_path / "data", per_class=12)


def test_early_stopping_stops_and_says_why(data, tmp_path):
    result = imgcls.train(str(data), out=tmp_path / "r", epochs=40, patience=1, lr=1e-7, **TINY)
    assert result.stopped == "early_stopping"
    assert len(result.history) < 40
    meta = json.loads((tmp_path / "r" / "bundle.json").read_text())
    assert meta["metrics"]["stopped"] == "early_stopping"


def test_time_budget_stops_cleanly_and_resume_finishes(data, tmp_path):
    run = tmp_path / "r"
    first = imgcls.train(str(data), out=run, epochs=3, max_time=1e-4, **TINY)
    assert first.stopped == "max_time" and (run / "model.keras").exists()
    again = imgcls.train(out=run, resume=True, max_time=60, verbose=False)
    assert again.stopped == "completed" and len(again.history) == 3


def test_full_disk_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    real_write = checkpoint._write_npz
    calls = {"n": 0}

    def failing_write(path, arrays):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, arrays)

    monkeypatch.setattr(checkpoint, "_write_npz", failing_write)
    run = tmp_path / "r"
    with pytest.raises(ImgclsError, match="disk full"):
        imgcls.train(str(data), out=run, epochs=3, **TINY)
    monkeypatch.setattr(checkpoint, "_write_npz", real_write)
    ckpts = sorted((run / "checkpoints").glob("ckpt-*.npz"))
    assert len(ckpts) == 1 and not list((run / "checkpoints").glob(".tmp-*"))
    assert imgcls.train(out=run, resume=True, verbose=False).stopped == "completed"


def test_balanced_class_weights_and_tensorboard(tmp_path):
    data = write_folder(tmp_path / "data", classes=("a", "b"), per_class=4)
    write_folder(tmp_path / "data", classes=("b",), per_class=30, seed=5)  # b now outnumbers a
    import keras

    result = imgcls.train(
        str(data),
        out=tmp_path / "r",
        epochs=1,
        class_weight="balanced",
        tensorboard=True,
        precision="mixed_bfloat16",
        **TINY,
    )
    assert result.stopped == "completed"
    assert keras.config.dtype_policy().name == "float32"  # the run's precision does not leak out
    assert any((tmp_path / "r" / "tensorboard").rglob("events.out.tfevents.*"))


def test_changing_nothing_computed_is_allowed_on_resume(data, tmp_path):
    run = tmp_path / "r"
    imgcls.train(str(data), out=run, epochs=2, max_time=1e-4, **TINY)
    result = imgcls.train(
        out=run, resume=True, keep_checkpoints=5, checkpoint_every=3, max_time=60, verbose=False
    )
    assert result.stopped == "completed"
    assert np.isfinite(result.history[-1]["loss"])
