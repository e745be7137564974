"""Every registered model builds, trains a step, and survives a save and safe-mode load."""

from __future__ import annotations

import numpy as np
import pytest

import imgcls
from imgcls.errors import ImgclsError
from imgcls.models import create_model, get_spec, list_models
from tests.conftest import HEAVY_MODELS

# the larger backbones run in `make test-slow` (tests/conftest.py)
EVERY_MODEL = [
    pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_MODELS else n for n in list_models()
]


class _Saved:
    """Registered models, each trained one step on first use and saved as a bundle's inference
    graph (with 2-view test-time augmentation), with its probabilities on 8 images."""

    def __init__(self, folder):
        self.folder, self.inputs, self.probs = folder, {}, {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.probs:
            self._build(name)
        return self.probs[name]

    def _build(self, name: str) -> None:
        import keras

        from imgcls.bundle import float32_copy, inference_model

        rng = np.random.default_rng(0)
        spec = get_spec(name)
        side = max(spec.min_side, 16)
        model = create_model(
            name, (side, side, 3), 3, **({"weights": "none"} if spec.pretrained else {})
        )
        x = rng.integers(0, 256, (8, side, side, 3)).astype(np.uint8)
        spec.init_from_data(model, x, seed=0)
        if spec.pretrained:  # as the recipe's head phase: tracing a backbone's gradients takes 20 s
            model.get_layer("backbone").trainable = False
        model.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=False)
        model.train_on_batch(x.astype("float32"), np.eye(3)[rng.integers(0, 3, 8)])  # one step
        graph = inference_model(float32_copy(model), "flip", 1.0)
        graph.save(self.folder / f"{name}.keras")
        self.inputs[name] = x.astype("float32")
        self.probs[name] = np.asarray(graph.predict_on_batch(x.astype("float32")))
        np.save(self.folder / f"{name}.npy", self.inputs[name])
        keras.backend.clear_session()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> _Saved:
    return _Saved(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_every_model_trains_and_round_trips(name, saved):
    import keras

    probs = saved[name]
    assert probs.shape == (8, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    loaded = keras.saving.load_model(saved.folder / f"{name}.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict_on_batch(saved.inputs[name]), probs, rtol=1e-5, atol=1e-6
    )


def test_every_model_predicts_the_same_in_a_fresh_interpreter(saved):
    """Plain keras.saving.load_model after `import imgcls`, in a new process, safe mode on."""
    import subprocess
    import sys

    script = (
        "import sys, numpy as np, imgcls, keras\n"
        "folder = sys.argv[1]\n"
        "for name in sys.argv[2:]:\n"
        "    m = keras.saving.load_model(f'{folder}/{name}.keras', compile=False, safe_mode=True)\n"
        "    np.save(f'{folder}/{name}.out.npy', m.predict_on_batch(np.load(f'{folder}/{name}.npy')))\n"
    )
    names = [n for n in list_models() if n not in HEAVY_MODELS]  # one of each kind of network
    expected = {name: saved[name] for name in names}
    subprocess.run([sys.executable, "-c", script, str(saved.folder), *names], check=True)
    for name in names:
        got = np.load(saved.folder / f"{name}.out.npy")
        np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", EVERY_MODEL)
def test_every_model_has_a_bfloat16_copy(name, saved):
    """The keras-bf16 engine's copy: every layer but the output computes in bfloat16, the
    answers stay close, and converting back to float32 gives the original numbers exactly."""
    import keras

    from imgcls.bundle import all_layers, classifier_of, inference_model, policy_copy

    expected = saved[name]
    graph = keras.saving.load_model(saved.folder / f"{name}.keras", compile=False)
    classifier = classifier_of(graph)
    half = policy_copy(classifier, "mixed_bfloat16")
    output = half.outputs[0]._keras_history.operation
    assert output.dtype_policy.name == "float32"
    policies = {
        layer.dtype_policy.name
        for layer in all_layers(half)
        if layer is not output
        and not isinstance(layer, (keras.layers.InputLayer, keras.Model))  # no math of their own
    }
    assert "mixed_bfloat16" in policies and "float32" not in policies
    x = saved.inputs[name]
    probs = np.asarray(inference_model(half, "flip").predict_on_batch(x))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, atol=0.05)
    back = inference_model(policy_copy(half, "float32"), "flip")
    np.testing.assert_array_equal(back.predict_on_batch(x), graph.predict_on_batch(x))


def test_registry_lists_models():
    assert {"classic", "fast", "mobilenetv3small", "efficientnetb0", "resnet50"} <= set(
        imgcls.list_models()
    )


def test_too_small_images_are_refused():
    with pytest.raises(ImgclsError, match="at least"):
        create_model("classic", (4, 4, 3), 2)


def test_backbone_weights_from_a_local_file(tmp_path):
    source = create_model("mobilenetv3small", (32, 32, 3), 2, weights="none")
    path = tmp_path / "backbone.weights.h5"
    source.get_layer("backbone").save_weights(path)
    loaded = create_model("mobilenetv3small", (32, 32, 3), 2, weights=str(path))
    for a, b in zip(
        source.get_layer("backbone").get_weights(),
        loaded.get_layer("backbone").get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ImgclsError, match="existing weights file"):
        create_model("mobilenetv3small", (32, 32, 3), 2, weights=str(tmp_path / "missing.h5"))


@pytest.mark.slow  # ~35 s; the photos tests train a backbone's head on cached activations
def test_transfer_learning_freezes_then_fine_tunes_and_resumes_exactly(tmp_path):
    """The head trains alone on cached features, then the top of the backbone too; resuming at
    the switch is exact."""
    import shutil

    import keras

    from tests.conftest import write_folder

    data = write_folder(tmp_path / "data", per_class=12)
    kw = dict(
        model="mobilenetv3small",
        weights="none",
        epochs=4,
        finetune_epochs=1,
        batch_size=8,
        image_size=(32, 32),
        keep_checkpoints=20,
        verbose=False,
    )
    ref = imgcls.train(str(data), out=tmp_path / "ref", **kw)
    assert ref.stopped == "completed" and len(ref.history) == 4
    frozen_lr, tuned_lr = ref.history[0]["lr"], ref.history[3]["lr"]
    assert tuned_lr < frozen_lr  # fine-tuning runs at a fraction of the head's rate
    # Cut the run back to the checkpoint taken at the end of the frozen phase, then resume.
    run = tmp_path / "cut"
    shutil.copytree(tmp_path / "ref", run)
    ckpts = sorted((run / "checkpoints").glob("ckpt-*.npz"))
    steps = int(ckpts[-1].stem.split("-")[1]) // 4
    for p in ckpts:
        if int(p.stem.split("-")[1]) > 3 * steps:
            p.unlink()
    (run / "model.keras").unlink()
    (run / "bundle.json").unlink()
    imgcls.train(out=run, resume=True, verbose=False)
    a = keras.saving.load_model(tmp_path / "ref" / "model.keras", compile=False).get_weights()
    b = keras.saving.load_model(run / "model.keras", compile=False).get_weights()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_recipe_is_typed_and_a_mistyped_key_is_named():
    from imgcls.errors import ImgclsError
    from imgcls.models import get_spec, register_model
    from imgcls.models.recipe import Recipe

    fast = get_spec("fast").recipe
    assert isinstance(fast, Recipe) and (fast.epochs, fast.optimizer) == (24, "sgd")
    assert get_spec("classic").recipe.finetune_fraction == Recipe().finetune_fraction  # defaults
    with pytest.raises(ImgclsError, match=r"Unknown recipe key\(s\) \['epoch'\]; a recipe takes"):
        register_model("typo", "a typo", recipe={"epoch": 3})
    with pytest.raises(ImgclsError, match="`optimizer` must be one of"):
        Recipe(optimizer="adam")
