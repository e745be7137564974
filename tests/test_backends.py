"""imgcls on every Keras backend: JAX and PyTorch without TensorFlow, exact resume on each, and
one bundle predicting the same on all three."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_folder

# Runs imgcls's CLI with TensorFlow unimportable: a spec whose loader refuses, so
# `import tensorflow` fails while libraries that only probe find_spec (torch) carry on.
NO_TF = """
import sys, importlib.abc, importlib.machinery
class Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError(f"{spec.name} must not be imported on this backend")
    def exec_module(self, module):
        pass
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            return importlib.machinery.ModuleSpec(name, Refuse())
sys.meta_path.insert(0, Block())
from imgcls.cli import main
sys.exit(main(sys.argv[1:]))
"""
OTHER_BACKENDS = [
    pytest.param(b, marks=pytest.mark.skipif(not importlib.util.find_spec(b), reason=f"no {b}"))
    for b in ("jax", "torch")
]
# The whole train-resume-evaluate-predict path on PyTorch in make test-slow (~35 s): JAX walks
# the same non-TensorFlow feeder in make test, and PyTorch's batches and bundles are checked below.
TRAINED_ON = [
    pytest.param(*p.values, marks=[*p.marks, pytest.mark.slow]) if p.values == ("torch",) else p
    for p in OTHER_BACKENDS
]
TINY = ["--model", "classic", "--image-size", "16", "16", "--batch-size", "8",
        "--model-arg", "filters=[8,16]", "--model-arg", "dense_units=16"]  # fmt: skip


def imgcls_cli(
    backend: str, *args: str, block_tf: bool = True, **more_env: str
) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND=backend, **more_env)
    code = NO_TF if block_tf else "import sys; from imgcls.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600
    )


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def final_weights(run: Path) -> list[np.ndarray]:
    """The last checkpoint's model variables (what resume must reproduce bit for bit)."""
    from imgcls.train.checkpoint import CheckpointManager

    _, arrays = CheckpointManager(run).load_latest()
    return [arrays[k] for k in sorted(arrays) if k.startswith("model_")]


@pytest.mark.parametrize("backend", TRAINED_ON)
def test_train_resume_evaluate_predict_without_tensorflow(backend, tmp_path):
    data = write_folder(tmp_path / "data", per_class=12)
    ref = tmp_path / "ref"
    ok(imgcls_cli(backend, "train", str(data), "--out", str(ref), "--epochs", "3",
                  "--checkpoint-every", "2", "--keep-checkpoints", "10", "--quiet", *TINY))  # fmt: skip
    assert json.loads((ref / "run.json").read_text())["config"]["backend"] == backend
    # Cut the run back to its first checkpoint (mid-epoch, step 2 of 3) and resume: the same
    # weights as the uninterrupted run, bit for bit.
    cut = tmp_path / "cut"
    shutil.copytree(ref, cut)
    ckpts = sorted((cut / "checkpoints").glob("ckpt-*.npz"))
    assert ckpts[0].name == "ckpt-00000002.npz"
    for p in ckpts[1:]:
        p.unlink()
    (cut / "model.keras").unlink()
    ok(imgcls_cli(backend, "train", "--resume", str(cut), "--quiet"))
    for a, b in zip(final_weights(ref), final_weights(cut), strict=True):
        np.testing.assert_array_equal(a, b)
    script = NO_TF.replace(
        "from imgcls.cli import main\nsys.exit(main(sys.argv[1:]))",
        "import imgcls\n"
        "m = imgcls.evaluate(sys.argv[1], sys.argv[2], out=sys.argv[3])\n"
        "print(m['accuracy'], len(imgcls.load(sys.argv[1]).predict(sys.argv[4:])))",
    )
    cats = sorted(str(p) for p in (data / "cats").glob("*.png"))
    r = subprocess.run(
        [sys.executable, "-c", script, str(ref), str(data), str(tmp_path / "ev"), *cats],
        capture_output=True, text=True, env=dict(os.environ, KERAS_BACKEND=backend), timeout=600,
    )  # fmt: skip
    accuracy, n = ok(r).stdout.split()[-2:]
    # evaluate on this backend scores the test split exactly as training scored it
    recorded = json.loads((ref / "bundle.json").read_text())["metrics"]["test_accuracy"]
    assert float(accuracy) == pytest.approx(recorded, abs=1e-12) and int(n) == 12
    assert (tmp_path / "ev" / "report.html").is_file()
    wrong = "torch" if backend == "jax" else "jax"
    r = imgcls_cli(wrong, "train", "--resume", str(cut))
    assert r.returncode == 2 and f"trained on the {backend} backend" in r.stderr


# The first training batch of two epoch plans (flips and shifts, then photo crops and colour)
# as the backend's feeder gives it: tf.data on TensorFlow, a PyDataset on JAX and PyTorch.
FIRST_BATCHES = """
import sys, numpy as np, keras
from imgcls.data.pipeline import EpochPlan, train_dataset
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (40, 20, 24, 3), dtype=np.uint8)
y = (np.arange(40) % 4).astype(np.int32)
out = []
for augment, extra in ((("flip", "translate"), dict(translate=3, alternate_flip=True)),
                       (("flip", "crop", "color"), {})):
    ds = train_dataset(x, y, EpochPlan(8, 5, 3, augment, skip_steps=1, **extra), num_classes=4)
    images, labels = next(iter(ds)) if keras.config.backend() == "tensorflow" else ds[0]
    out += [keras.ops.convert_to_numpy(images), keras.ops.convert_to_numpy(labels)]
np.savez(sys.argv[1], *out)
"""


def first_batches(backend: str, path: Path) -> list[np.ndarray]:
    env = dict(os.environ, KERAS_BACKEND=backend)
    r = subprocess.run([sys.executable, "-c", FIRST_BATCHES, str(path)], capture_output=True,
                       text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(4)]


@pytest.fixture(scope="module")
def tf_batches(tmp_path_factory) -> list[np.ndarray]:
    return first_batches("tensorflow", tmp_path_factory.mktemp("tf") / "tf.npz")


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_the_same_seed_gives_the_same_batch_on_every_backend(backend, tf_batches, tmp_path):
    """One augmentation: TensorFlow's tf.data batch and the backend's PyDataset batch are the
    same, bit for bit for flips and shifts, to float rounding for interpolated crops."""
    here = tf_batches
    there = first_batches(backend, tmp_path / f"{backend}.npz")
    np.testing.assert_array_equal(here[0], there[0])  # flips and shifts: exact
    np.testing.assert_array_equal(here[1], there[1])
    assert np.abs(here[2] - there[2]).max() <= 1e-3 * 255  # crops and colour
    np.testing.assert_array_equal(here[3], there[3])
    assert not np.array_equal(here[0], here[2])  # the plans did augment differently


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_a_bundle_predicts_the_same_on_every_backend(backend, trained_run, tmp_path):
    """The session's run (trained on TensorFlow) on another backend, float32: max |dp| <= 1e-4."""
    import imgcls

    run, data = trained_run
    paths = sorted(str(p) for p in data.glob("*/*.png"))[:24]
    here = imgcls.load(run).predict_proba(paths)
    script = (
        "import sys, json, imgcls\n"
        "p = imgcls.load(sys.argv[1]).predict_proba(sys.argv[2:])\n"
        "print(json.dumps(p.tolist()))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script, str(run), *paths], capture_output=True, text=True,
        env=dict(os.environ, KERAS_BACKEND=backend), timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    there = np.array(json.loads(r.stdout.strip().splitlines()[-1]))
    assert np.abs(there - here).max() <= 1e-4


def test_an_unknown_or_missing_backend_is_one_line(trained_run, tmp_path):
    r = imgcls_cli("mxnet", "predict", str(trained_run[0]), str(tmp_path), block_tf=False)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("imgcls: error: `backend` must be one of")


@pytest.mark.slow  # three JAX processes, ~40 s
@pytest.mark.skipif(not importlib.util.find_spec("jax"), reason="no jax")
def test_jax_reuses_its_compiled_steps_from_the_cache_and_the_flag_turns_it_off(tmp_path):
    """The first JAX run compiles its training step into $IMGCLS_CACHE/jax; an identical second
    run loads it from there (JAX's own log says so), writes nothing new and learns the
    same weights; --no-compile-cache neither reads nor writes a cache."""
    data = write_folder(tmp_path / "data", per_class=10)
    args = [str(data), *TINY, "--epochs", "1", "--quiet"]

    def run(out: str, cache: Path, *extra: str) -> tuple[str, set[str]]:
        r = ok(imgcls_cli("jax", "train", *args, "--out", str(tmp_path / out), *extra,
                          IMGCLS_CACHE=str(cache), JAX_LOG_COMPILES="1"))  # fmt: skip
        files = {p.name for p in (cache / "jax").glob("*")} if (cache / "jax").is_dir() else set()
        return r.stderr, files

    hit = "Persistent compilation cache hit for 'jit_train_step'"  # JAX's own log line
    log, first = run("a", tmp_path / "cache")
    assert hit not in log and any(name.startswith("jit_train_step") for name in first)
    log, again = run("b", tmp_path / "cache")
    assert hit in log
    assert again == first  # nothing new was compiled
    for a, b in zip(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"), strict=True):
        np.testing.assert_array_equal(a, b)
    log, files = run("c", tmp_path / "other", "--no-compile-cache")
    assert files == set() and hit not in log
