"""The one seam where TensorFlow, JAX or PyTorch specifics live.

imgcls runs on any Keras 3 backend; library code uses ``keras`` and ``keras.ops``. What the
backends do differently (choosing one, seeding and determinism, the GPU's compute capability,
out-of-memory errors, gradients of an arbitrary function, muting start-up chatter) is here, so
that no other module imports ``tensorflow``, ``jax`` or ``torch`` (the input pipeline's
``tf.data`` path runs only on the TensorFlow backend). With ``KERAS_BACKEND=jax`` or ``torch``
imgcls never imports TensorFlow.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from imgcls.config import BACKENDS
from imgcls.errors import check

# What to install for each backend (pyproject extras); TensorFlow's CPU build is a dependency.
EXTRAS = {
    "tensorflow": "pip install imgcls (CPU) or 'imgcls[tensorflow-gpu]'",
    "jax": "pip install 'imgcls[jax]' (CPU) or 'imgcls[jax-cuda]'",
    "torch": "pip install 'imgcls[torch]'",
}
COMPILE_CACHE_ENV = "IMGCLS_COMPILE_CACHE"  # "0": JAX compiles every run afresh
LIBRARIES = ("imgcls", "keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "numpy",
             "pillow")  # fmt: skip


def requested() -> str:
    """The backend Keras will use: ``$KERAS_BACKEND``, else Keras' config file, else tensorflow."""
    if "keras" in sys.modules:
        import keras

        return keras.config.backend()
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    import json

    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def select(name: str | None) -> str:
    """Make ``name`` (or the requested one) Keras' backend before Keras is imported; check it is
    one imgcls runs on and that it is installed. Returns the backend's name.

    Raises:
        ImgclsError: an unknown or uninstalled backend, or Keras already runs another one.
    """
    name = name or requested()
    check(
        name in BACKENDS,
        f"`backend` must be one of {set(BACKENDS)}. Received: backend={name!r}",
    )
    if "keras" in sys.modules:
        import keras

        check(
            keras.config.backend() == name,
            f"`backend` {name} was asked for, but Keras already runs on {keras.config.backend()} "
            "in this process; set KERAS_BACKEND before starting it",
        )
        return name
    check(
        importlib.util.find_spec(name) is not None,
        f"backend {name} is not installed: {EXTRAS[name]}",
    )
    os.environ["KERAS_BACKEND"] = name
    if name == "jax":
        use_compilation_cache()
    return name


def use_compilation_cache() -> Path | None:
    """JAX: keep compiled XLA programs in ``cache_root()/jax``, so the next run of the same
    step (same shapes, devices and versions: JAX keys each entry by all of them) loads it
    instead of compiling again (13.6 s of an H200 run's first epoch). On unless
    ``$IMGCLS_COMPILE_CACHE`` is ``0`` (``--no-compile-cache``). Returns the folder, or None."""
    if os.environ.get(COMPILE_CACHE_ENV, "1") == "0":
        return None
    import jax

    from imgcls.io import cache_root

    folder = cache_root() / "jax"
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Every program (JAX's default keeps those that took over 1 s): a run compiles a few dozen,
    # small ones included, and a second run of classic on digits then compiles none (19 -> 13 s).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return folder


def name() -> str:
    """The backend Keras runs on (imports Keras)."""
    import keras

    return keras.config.backend()


def import_keras_quietly() -> None:
    """Import Keras (and its backend) with the backend's C-level start-up lines muted."""
    if "keras" in sys.modules:
        return
    select(None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and the backend; with ``deterministic``, make its ops reproducible."""
    import keras

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    keras.utils.set_random_seed(seed)
    if not deterministic:
        return
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
    # JAX is deterministic on CPU; on GPU XLA's flag must be set before JAX starts.


def gpu_capability() -> tuple[int, int] | None:
    """Compute capability of the first GPU the backend sees, or ``None`` without one."""
    import keras

    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        details = tf.config.experimental.get_device_details(gpus[0])
        return tuple(details.get("compute_capability", (0, 0)))
    if backend == "torch":
        import torch

        return tuple(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None
    import jax

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        return None
    major, _, minor = str(getattr(gpus[0], "compute_capability", "0.0")).partition(".")
    return int(major or 0), int(minor or 0)


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16 math
GPU_BF16_MIN_CAPABILITY = (8, 0)  # Ampere and newer compute bfloat16 natively


def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists an instruction set with native bfloat16 math."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return any(f in flags for f in CPU_BF16_FLAGS)


def native_bf16() -> bool:
    """True when the backend computes bfloat16 in hardware here: a GPU of compute capability
    8.0+, or a CPU with avx512_bf16/AMX under TensorFlow or PyTorch (XLA emulates bfloat16 on
    a CPU: JAX ran ``fast`` 3.7x slower in it than TensorFlow)."""
    capability = gpu_capability()
    if capability is not None:
        return capability >= GPU_BF16_MIN_CAPABILITY
    return name() != "jax" and cpu_has_bf16()


def device_function(fn):
    """``fn`` (a function of ``keras.ops``) compiled once for the device where that pays: JAX on
    a GPU or TPU, which otherwise dispatches one eager op at a time from Python. Measured for
    ``fast``'s augmentation of a 512-image batch of 32x32 (:func:`imgcls.data.augment.apply_params`,
    2 cores, JAX 0.10): 90 ms of host time per batch eager against 0.5 ms compiled, which on an
    H200 had capped training at ~16,000 images/s. On a CPU the eager ops run at once and beat
    XLA's compiled gather (98 ms against 172 ms a batch), and PyTorch and TensorFlow (whose
    ``tf.data`` path runs the augmentation in graph mode already) get ``fn`` unchanged."""
    import keras

    if keras.config.backend() != "jax":
        return fn
    import jax

    return jax.jit(fn) if jax.default_backend() != "cpu" else fn


def is_out_of_memory(e: BaseException) -> bool:
    """True for the backend's out-of-memory error (or a plain ``MemoryError``)."""
    text = f"{type(e).__name__} {e}"
    return (
        isinstance(e, MemoryError)
        or type(e).__name__ in ("ResourceExhaustedError", "OutOfMemoryError")
        or "RESOURCE_EXHAUSTED" in text
        or "CUDA out of memory" in text
    )


def activation_gradients(run, x, index, is_logits: bool, split=None) -> tuple[Any, Any]:
    """Grad-CAM's ingredients: a layer's activations and the gradient of each image's chosen
    class score with respect to them.

    Args:
        run: ``x -> ([activations], scores)``, the model cut open at the layer.
        x: float32 pixels.
        index: the class per image.
        is_logits: ``scores`` are logits (else probabilities, whose log is taken).
        split: for JAX, which has no gradient tape: ``(to_activations, from_activations)``,
            the model's two halves; ``None`` when the layer cannot be cut out that way.

    Returns:
        ``(activations, gradients)`` as float32 backend tensors.
    """
    import keras
    from keras import ops

    def chosen(scores):
        scores = ops.cast(scores, "float32")
        if not is_logits:
            scores = ops.log(ops.maximum(scores, 1e-12))
        return ops.take_along_axis(scores, ops.reshape(index, (-1, 1)), axis=1)

    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            (fmap,), scores = run(tf.convert_to_tensor(x))
            picked = chosen(scores)
        return fmap, tape.gradient(picked, fmap)
    if backend == "torch":
        import torch

        with torch.enable_grad():
            (fmap,), scores = run(ops.convert_to_tensor(x))
            (grad,) = torch.autograd.grad(chosen(scores).sum(), fmap)
        return fmap.detach(), grad
    check(split is not None, "Grad-CAM of this model needs the tensorflow or torch backend")
    import jax

    to_fmap, from_fmap = split
    fmap = to_fmap(ops.convert_to_tensor(x))
    picked, vjp = jax.vjp(lambda f: chosen(from_fmap(f)), fmap)
    return fmap, vjp(ops.ones_like(picked))[0]


def init_processes(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a data-parallel job of ``num_processes`` processes (JAX only): process 0 listens on
    ``coordinator`` (``host:port``), the others connect to it. Call before any computation.

    Raises:
        ImgclsError: another backend, or numbers that do not make a job.
    """
    check(
        requested() == "jax",
        "training over several processes needs the jax backend (Keras' distribution API): "
        "KERAS_BACKEND=jax",
    )
    check(
        isinstance(num_processes, int) and num_processes >= 1,
        f"`num_processes` must be a positive integer. Received: num_processes={num_processes}",
    )
    check(
        isinstance(process_id, int) and 0 <= process_id < num_processes,
        f"`process_id` must be in [0, {num_processes}). Received: process_id={process_id}",
    )
    host, _, port = (coordinator or "").rpartition(":")
    check(
        bool(host) and port.isdigit(),
        f"`coordinator` must be HOST:PORT (process 0's address). Received: coordinator={coordinator}",
    )
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPUs talk over TCP
    import keras

    keras.distribution.initialize(coordinator, num_processes, process_id)


def process_info() -> tuple[int, int]:
    """``(this process's index, number of processes)`` of a data-parallel job; ``(0, 1)``
    when there is none."""
    if requested() != "jax":  # without importing Keras (train/ahead.py forks before that)
        return 0, 1
    import jax

    return jax.process_index(), jax.process_count()


def agreed(value: float) -> float:
    """``value`` as process 0 of a data-parallel job has it, on every process (each must call
    this at the same point of its loop); ``value`` itself outside a job. A clock read this way
    stops every process at the same step and gives them the same learning rates."""
    if process_info()[1] == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return float(multihost_utils.broadcast_one_to_all(np.float32(value)))


def data_parallel(on: bool) -> int:
    """Spread each batch over every device of every process (Keras ``DataParallel``), or stop;
    returns the number of devices. Only JAX, and only with more than one device."""
    import keras

    if name() != "jax":
        return 1
    devices = keras.distribution.list_devices()
    if on and len(devices) > 1:
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
        )
    else:
        keras.distribution.set_distribution(None)
    return len(devices)


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that decide what a model computes, every
    backend included (a bundle's and an export's record)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in LIBRARIES:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out
