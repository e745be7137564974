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


def _poisoned_model(input_shape, num_classes, after_steps: int = 4):
    """A tiny classifier whose output turns NaN once it has trained ``after_steps`` steps."""
    import keras
    from keras import layers, ops

    class PoisonAfter(layers.Layer):
        def build(self, shape):
            self.count = self.add_weight(shape=(), initializer="zeros", trainable=False)

        def call(self, x, training=False):
            if training:
                self.count.assign_add(1.0)
            return x + ops.cast(ops.where(self.count > after_steps, float("nan"), 0.0), x.dtype)

    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    x = PoisonAfter()(layers.Dense(num_classes)(x))
    return keras.Model(inputs, layers.Softmax(dtype="float32")(x))


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
    data, tmp_path, monkeypatch
):
    import imgcls.models as models

    # registered for this test alone: other tests in this process list every model
    models._load_families()
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    models.register_model("poisoned", "test only: NaN after 4 steps")(_poisoned_model)
    run = tmp_path / "r"
    with pytest.raises(ImgclsError, match=r"loss became NaN at epoch 2, step \d.*--lr"):
        imgcls.train(str(data), out=run, model="poisoned", epochs=3, batch_size=8, verbose=False)
    found = checkpoint.CheckpointManager(run).load_latest()
    assert found is not None
    path, arrays = found
    assert checkpoint.peek_state(arrays)["epoch"] == 1  # epoch 1 finished before the NaN
    weights = [v for k, v in arrays.items() if k != "state" and v.dtype.kind == "f"]
    assert weights and all(np.isfinite(w).all() for w in weights)
    assert not (run / "model.keras").exists()  # no bundle from a diverged model


def test_out_of_memory_names_a_smaller_batch_and_keeps_the_checkpoint(data, tmp_path, monkeypatch):
    import keras
    import tensorflow as tf

    real_fit, calls = keras.Model.fit, {"n": 0}

    def fit_then_oom(self, *args, **kwargs):  # TF raises this when a batch does not fit
        calls["n"] += 1
        if calls["n"] == 2:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit_then_oom)
    run = tmp_path / "r"
    with pytest.raises(ImgclsError, match="out of memory with --batch-size 8.*--batch-size 4"):
        imgcls.train(str(data), out=run, epochs=3, **TINY)
    monkeypatch.setattr(keras.Model, "fit", real_fit)
    assert checkpoint.peek_state(checkpoint.CheckpointManager(run).load_latest()[1])["epoch"] == 1
    assert imgcls.train(out=run, resume=True, verbose=False).stopped == "completed"


def test_lookahead_pulls_the_weights_back_toward_their_average_every_k_steps():
    import keras

    from imgcls.train.optimizers import LookaheadSGD

    var = keras.Variable(np.zeros(3, np.float32))
    opt = LookaheadSGD(0.1, lookahead_every=2, lookahead_decay=0.9, momentum=0.0)
    opt.build([var])
    for step in range(1, 5):
        progress = step / 4
        opt.progress.assign(progress)  # the trainer sets it from its learning-rate plan
        opt.apply([keras.ops.ones(3)], [var])  # constant gradient: plain SGD reaches -0.1*step
        if step % 2:
            continue
        m = 0.9**2 * progress**3
        slow = keras.ops.convert_to_numpy(opt._model_variables_moving_average[0])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(var), slow, rtol=1e-6)
        if step == 2:  # the first sync mixes the fresh slow weights (zero) with the fast ones
            np.testing.assert_allclose(slow, (1 - m) * -0.2, rtol=1e-5)
    assert keras.ops.convert_to_numpy(var)[0] > -0.4  # averaging held it back
    restored = LookaheadSGD.from_config(opt.get_config())
    assert (restored.lookahead_every, restored.lookahead_decay) == (2, 0.9)


def test_muon_moves_kernels_along_an_orthogonalised_step_and_the_rest_by_sgd():
    import keras

    from imgcls.train.optimizers import LookaheadMuon

    rng = np.random.default_rng(0)
    kernel = keras.Variable(rng.normal(size=(3, 3, 8, 16)).astype(np.float32))
    offset = keras.Variable(np.ones(16, np.float32))
    opt = LookaheadMuon(
        0.1, 0, 0.0, muon_weight_decay=False, momentum=0.0, nesterov=True, weight_decay=0.5
    )
    before = keras.ops.convert_to_numpy(kernel)
    grad = rng.normal(size=(3, 3, 8, 16)).astype(np.float32)
    opt.apply([grad, np.ones(16, np.float32)], [kernel, offset])
    step = (before - keras.ops.convert_to_numpy(kernel)).reshape(-1, 16) / (0.1 * opt.muon_lr_ratio)
    singular = np.linalg.svd(step, compute_uv=False)
    assert singular.min() > 0.5 and singular.max() < 1.5  # orthogonalised, no weight decay
    # first momentum step (0.6 Nesterov): the direction is the gradient's
    assert np.corrcoef(step.ravel(), grad.reshape(-1, 16).ravel())[0, 1] > 0.5
    # the offset: plain SGD, decoupled weight decay (1 - 0.1 * 0.5), then the gradient step
    np.testing.assert_allclose(keras.ops.convert_to_numpy(offset), 0.95 - 0.1, rtol=1e-6)
    assert LookaheadMuon.from_config(opt.get_config()).muon_momentum == opt.muon_momentum


def test_a_binding_time_budget_decays_the_learning_rate_before_it_stops(data, tmp_path):
    result = imgcls.train(str(data), out=tmp_path / "r", epochs=500, lr=0.01, max_time=0.1, **TINY)
    assert result.stopped == "max_time" and 2 < len(result.history) < 250
    lrs = [row["lr"] for row in result.history]
    # By steps alone the rate would still be near its peak (under half the epochs ran); the
    # clock decays it instead, so the run ends nearly annealed rather than cut off at full rate.
    assert lrs[-1] < 0.3 * 0.01 and lrs[1:] == sorted(lrs[1:], reverse=True)  # after warm-up


def test_an_optimizer_that_plans_its_own_rate_follows_the_host_plan():
    """JAX sets the rate inside its compiled step (plan_in_graph); the rates must be the plan's."""
    import keras

    from imgcls.train.optimizers import LookaheadSGD
    from imgcls.train.setup import LrPlan, plan_in_graph

    plans = (LrPlan(0.4, 3, 12, "linear"), LrPlan(0.01, 2, 9, "cosine", 0.01),
             LrPlan(0.8, 3, 12, "linear", start=0.2, end=0.07))  # fmt: skip
    for plan in plans:
        var = keras.Variable(np.ones(2, np.float32))
        optimizer = LookaheadSGD(plan(0), lookahead_every=2, momentum=0.9)
        plan_in_graph(optimizer, plan)
        rates, progress = [], []
        for _ in range(12):
            optimizer.apply([keras.ops.zeros(2)], [var])
            rates.append(float(optimizer.learning_rate))
            progress.append(float(optimizer.progress))
        # the rate of step i is set just before step i is applied
        np.testing.assert_allclose(rates, [plan(i) for i in range(12)], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(progress, [plan.progress(i) for i in range(12)], atol=1e-6)
        assert max(rates) == pytest.approx(plan.peak) and rates[-1] < plan.peak / 5


def test_init_from_starts_where_another_run_ended(data, tmp_path, capsys):
    """--init-from: the new run's first weights are the old run's; mismatches are one line."""
    from imgcls.bundle import classifier_of, load_model
    from imgcls.cli import main

    first = imgcls.train(str(data), out=tmp_path / "a", epochs=3, **TINY).run_dir
    again = imgcls.train(str(data), out=tmp_path / "b", epochs=1, lr=1e-9, init_from=str(first),
                         **TINY).run_dir  # fmt: skip
    kernels = [
        [w for w in classifier_of(load_model(run)).weights if w.path.endswith("kernel")]
        for run in (first, again)
    ]
    assert len(kernels[0]) >= 3
    for a, b in zip(*kernels, strict=True):  # a rate of 1e-9 leaves them where they started
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
    assert json.loads((again / "run.json").read_text())["config"]["init_from"] == str(first)

    with pytest.raises(ImgclsError, match="is it a finished training run"):
        imgcls.train(str(data), out=tmp_path / "c", init_from=str(data), **TINY)
    with pytest.raises(ImgclsError, match="other model arguments"):
        imgcls.train(str(data), out=tmp_path / "d", init_from=str(first),
                     **{**TINY, "model_args": {"filters": (4,), "dense_units": 8}})  # fmt: skip
    args = ["train", str(data), "--out", str(tmp_path / "e"), "--init-from", str(first)]
    assert main([*args, "--model", "classic", "--image-size", "24", "24"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]
    assert len(err) == 1 and "--image-size 16 16" in err[0]
    assert not any((tmp_path / run / "run.json").exists() for run in "cde")  # nothing written


def test_a_second_run_on_the_same_data_decodes_nothing(data, tmp_path, monkeypatch):
    """The second run of a folder at the same size reads the decoded pixels from the disk cache
    (no image is opened) and learns exactly what the first did; another image size, or a
    changed file, decodes again (each a new cache entry)."""
    from imgcls.data import scan
    from tests.test_resume import assert_same, weights

    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "cache"))
    decoded = []
    real = scan.scan_files
    monkeypatch.setattr(scan, "scan_files", lambda *a, **k: decoded.append(1) or real(*a, **k))
    entries = lambda: len(list((tmp_path / "cache" / "pixels").glob("*.u8")))  # noqa: E731
    first = imgcls.train(str(data), out=tmp_path / "a", epochs=1, **TINY)
    assert len(decoded) == 1 and entries() == 1
    second = imgcls.train(str(data), out=tmp_path / "b", epochs=1, **TINY)
    assert len(decoded) == 1 and entries() == 1
    assert_same(weights(first.run_dir), weights(second.run_dir))
    assert first.test_metrics == second.test_metrics
    timeline = json.loads((tmp_path / "b" / "run.json").read_text())["timeline"]
    assert "data" in timeline
    imgcls.train(str(data), out=tmp_path / "c", epochs=1, **{**TINY, "image_size": (12, 12)})
    assert len(decoded) == 2 and entries() == 2
    from PIL import Image

    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(data / "dogs" / "000.png")
    imgcls.train(str(data), out=tmp_path / "d", epochs=1, **TINY)
    assert len(decoded) == 3 and entries() == 3


def test_a_recipe_shapes_the_warm_up_and_the_end_of_the_decay():
    """recipe warmup / lr_start / lr_end (airbench's schedule: 23% of the steps from 0.2 of the
    peak, down to 0.07 of it); unset, one epoch from zero, down to zero."""
    from imgcls.config import TrainConfig
    from imgcls.models.recipe import Recipe
    from imgcls.train.setup import build_optimizer

    config = TrainConfig(epochs=10, lr=0.5)
    _, plan = build_optimizer(config, Recipe(optimizer="sgd", schedule="linear"), 20)
    assert (plan.warmup, plan(0), plan(20), plan(200)) == (20, 0.0, 0.5, 0.0)
    shaped = Recipe(optimizer="sgd", schedule="linear", warmup=0.23, lr_start=0.2, lr_end=0.07)
    _, plan = build_optimizer(config, shaped, 20)
    assert plan.warmup == 46 and plan(0) == pytest.approx(0.1) and plan(46) == pytest.approx(0.5)
    assert plan(200) == pytest.approx(0.035) and plan(123) == pytest.approx(0.5 * (0.07 + 0.93 / 2))
