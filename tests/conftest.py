"""Shared fixtures: small image folders made on the fly, and a quick trained run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests never touch the network or the user's caches: no download is attempted, Keras' cache is
# an empty folder, and EfficientNet-Lite0 weights are converted once per session into a scratch
# folder (subprocesses inherit these).
os.environ["IMGCLS_OFFLINE"] = "1"
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="imgcls-test-keras-")
os.environ["IMGCLS_CACHE"] = tempfile.mkdtemp(prefix="imgcls-test-cache-")
_SCRATCH = (os.environ["KERAS_HOME"], os.environ["IMGCLS_CACHE"])


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's scratch caches (each run left two folders in /tmp before)."""
    for folder in _SCRATCH:
        shutil.rmtree(folder, ignore_errors=True)


# The larger backbones (3-25M parameters): building, saving, predicting and Grad-CAM cost ~70 s
# here, so their tests run in `make test-slow`. lite0 stands for the lite family in `make test`,
# mobilenetv3small for Keras Applications.
HEAVY_MODELS = frozenset({"efficientnet_lite1", "efficientnet_lite2", "efficientnetb0", "resnet50"})


# The files with the most seconds of tests (--durations on a 2-core AVX2 machine, 2026-12-05),
# most first. `make test` hands whole files to its two workers in collection order; starting
# the longest first keeps one worker from running a long file alone at the end.
LONGEST_FILES = ("test_backends.py", "test_resume.py", "test_photos.py", "test_serve.py",
                 "test_serve_schema.py", "test_cli.py", "test_models.py", "test_review.py",
                 "test_batch.py")  # fmt: skip


def pytest_collection_modifyitems(session, config, items):
    """The tests of :data:`LONGEST_FILES` first (longest first), the rest as collected."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order in a file


SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR_TRAIN = SHARED / "datasets" / "cifar10" / "train"


def make_image(kind: int, rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """A synthetic RGB image whose class is easy to learn: a bright stripe, square or cross."""
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    c = size // 2
    if kind == 0:
        img[:, c - 2 : c + 2] = [230, 40, 40]  # vertical red stripe
    elif kind == 1:
        img[c - 5 : c + 5, c - 5 : c + 5] = [40, 230, 40]  # green square
    else:
        img[c - 2 : c + 2, :] = [40, 40, 230]  # horizontal blue stripe
    return img


def write_folder(
    root: Path,
    classes=("cats", "dogs", "fish"),
    per_class: int = 30,
    seed: int = 0,
    ext: str = ".png",
) -> Path:
    """Write ``root/<class>/<i>.png`` synthetic images and return ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(make_image(k % 3, rng)).save(root / name / f"{i:03d}{ext}")
    return root


def write_photos(
    root: Path,
    classes=("cats", "dogs"),
    per_class: int = 20,
    splits=("train", "val"),
    seed: int = 0,
) -> Path:
    """Photo-like JPEGs of varied sizes (90-200 px, several aspect ratios) under
    ``root/<split>/<class>/`` (or ``root/<class>/`` with ``splits=()``); returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        for i in range(per_class):
            split = splits[int(i >= per_class * 0.75)] if splits else ""
            w, h = int(rng.integers(90, 200)), int(rng.integers(90, 200))
            small = make_image(k % 3, rng, size=32)
            img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three classes of 30 synthetic 24x24 PNG images each."""
    return write_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, data folder): a classic model trained for a few epochs on a synthetic folder."""
    import imgcls

    base = tmp_path_factory.mktemp("trained")
    data = write_folder(base / "images", per_class=40)
    run = base / "run"
    imgcls.train(
        str(data),
        out=run,
        model="classic",
        epochs=4,
        batch_size=16,
        image_size=(16, 16),
        verbose=False,
        model_args={"filters": (16, 32), "dense_units": 32},
    )
    return run, data


SCREENSHOT_TOLERANCE = 8  # largest 0..255 pixel difference that still counts as the same picture


def save_screenshot(png: bytes, path: Path) -> None:
    """Write a README screenshot to ``path``, unless the one there looks the same: Chromium's
    raster varies a pixel by a level or two between runs, which should not dirty the checkout."""
    import io

    import numpy as np
    from PIL import Image

    def pixels(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)

    if path.exists():
        old, new = pixels(path.read_bytes()), pixels(png)
        if old.shape == new.shape and np.abs(old - new).max() <= SCREENSHOT_TOLERANCE:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".png.partial")
    partial.write_bytes(png)
    partial.replace(path)


SERVE_READY_S = 120  # the server imports TensorFlow and loads the model before it answers


class Server:
    """``imgcls COMMAND RUN FLAGS`` (``serve`` by default) on a free loopback port in a
    subprocess; ``url`` answers ``ready`` once the constructor returns. ``$IMGCLS_TOKEN`` is not
    passed on."""

    def __init__(self, run: Path, *flags: str, log: Path | None = None, command: str = "serve",
                 ready: str = "/v2/health/ready"):  # fmt: skip
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or Path(tempfile.mkstemp(prefix="imgcls-serve-", suffix=".log")[1])
        env = {k: v for k, v in os.environ.items() if k != "IMGCLS_TOKEN"}
        cmd = [sys.executable, "-m", "imgcls", command, str(run), "--port", str(self.port), *flags]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + SERVE_READY_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"imgcls serve exited: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}{ready}", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"imgcls serve not ready in {SERVE_READY_S} s: {self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
