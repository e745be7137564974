"""`imgcls explain`: the PNGs it writes decode, it works for any CNN, and bad input gets one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgcls.cli import main
from imgcls.models import list_models
from tests.conftest import HEAVY_MODELS


def _decodes(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and min(img.size) > 10


def _an_image(data: Path) -> Path:
    return sorted((data / "fish").glob("*.png"))[0]


def test_explain_writes_pictures_and_top_k(trained_run, tmp_path, capsys):
    run, data = trained_run
    out = tmp_path / "explain"
    assert main(["explain", str(run), str(_an_image(data)), "--out", str(out), "--top-k", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    result = json.loads((out / "explain.json").read_text())
    assert [r["label"] for r in result["top_k"]][0] == "fish" and len(result["top_k"]) == 2
    assert printed[0].startswith("fish ")
    assert (
        result["blocks"] == ["block1_conv2", "block2_conv2"]
        and result["grad_cam_layer"] == "block2_conv2"
    )
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == sorted(result["files"])
    assert {
        "filters.png",
        "gradcam.png",
        "top_k.png",
        "feature_maps_1_block1_conv2.png",
        "feature_maps_2_block2_conv2.png",
    } == set(names)
    for name in names:
        _decodes(out / name)
    assert not list(out.glob(".tmp-*"))


def _custom_model(shape: tuple[int, int, int], n_classes: int):
    """No 'logits' layer, a softmax inside Dense, a nested conv stack and a depthwise convolution."""
    import keras
    from keras import layers

    inputs = keras.Input(shape, name="pixels")
    x = layers.Rescaling(1 / 255)(inputs)
    x = keras.Sequential([layers.Conv2D(8, 3, padding="same", activation="relu")], name="stem")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(n_classes, activation="softmax")(x), name="custom")


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(sorted(set(list_models()) - HEAVY_MODELS), id="light"),
        pytest.param(sorted(HEAVY_MODELS), id="heavy", marks=pytest.mark.slow),
    ],
)
def test_grad_cam_and_feature_maps_for_every_registered_model_and_a_custom_one(names):
    from imgcls.evaluate.explain import (
        block_layers,
        conv_layers,
        feature_maps,
        first_conv_kernel,
        grad_cam,
    )
    from imgcls.models import create_model, get_spec

    rng = np.random.default_rng(0)
    models = [
        create_model(
            name,
            (max(32, get_spec(name).min_side),) * 2 + (3,),
            4,
            **({"weights": "none"} if getattr(get_spec(name), "pretrained", False) else {}),
        )
        for name in names
    ]
    for model in [*models, _custom_model((16, 16, 3), 4)]:
        side = model.input_shape[1]
        pixels = rng.integers(0, 255, (2, side, side, 3)).astype(np.float32)
        blocks = block_layers(model)
        maps = feature_maps(model, pixels[0], blocks)
        assert len(maps) == len(blocks) >= 1 and all(m.ndim == 3 for m in maps), model.name
        cams = grad_cam(model, pixels, [0, 3])
        assert cams.shape[0] == 2 and cams.min() >= 0 and cams.max() <= 1, model.name
        assert first_conv_kernel(model).ndim == 4
        if len(model.output.shape) == 2 and any(
            len(layer.output.shape) == 2 and layer.name == "backbone" for layer in model.layers
        ):
            assert (
                conv_layers(model)[-1].parent is not None
            )  # Grad-CAM reaches inside a pooled backbone


def test_explain_a_run_whose_model_has_no_logits_layer(trained_run, tmp_path):
    import imgcls

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run[0] / "bundle.json", run)
    _custom_model((16, 16, 3), 3).save(run / "model.keras")
    result = imgcls.explain(run, _an_image(trained_run[1]), out=tmp_path / "out")
    assert result["grad_cam_layer"] == "dw" and result["blocks"] == ["stem", "dw"]
    for name in result["files"]:
        _decodes(tmp_path / "out" / name)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgcls: error:") and "\n" not in err, err
    return err


def test_bad_input_exits_2_with_one_line(trained_run, tmp_path, capsys):
    run, data = trained_run
    out = tmp_path / "out"
    assert main(["explain", str(run), str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    assert "missing.png" in _error_line(capsys)
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not an image at all")
    assert main(["explain", str(run), str(fake), "--out", str(out)]) == 2
    assert "fake.png" in _error_line(capsys)
    broken = Path(shutil.copytree(run, tmp_path / "broken"))
    (broken / "model.keras").write_bytes(b"garbage")
    assert main(["explain", str(broken), str(_an_image(data)), "--out", str(out)]) == 2
    assert "model.keras" in _error_line(capsys)
    assert not out.exists()
