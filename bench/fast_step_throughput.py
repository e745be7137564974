"""Training throughput of the `fast` network's variants: what each design choice costs per step.

Each variant trains in its own process (fresh TensorFlow, same thread pools) on synthetic
32x32 batches; the figure is the median images/s over timed steps after a warm-up, and the
ratio is against the first variant (the shipped recipe) measured in the same run. Accuracy is
not measured here: docs/BENCHMARKS.md pairs these speeds with the 8-epoch CIFAR-10 ablations.

Usage: python bench/fast_step_throughput.py [--steps 24] [--variants relu gelu ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import RESULTS, write_result

VARIANTS = {  # name -> (model arguments, batch size, deterministic ops, precision[, compile])
    "shipped (relu, 512)": ({"activation": "relu"}, 512, True, "mixed_bfloat16"),
    "gelu": ({"activation": "gelu"}, 512, True, "mixed_bfloat16"),
    "relu, batch 256": ({"activation": "relu"}, 256, True, "mixed_bfloat16"),
    "relu, no op determinism": ({"activation": "relu"}, 512, False, "mixed_bfloat16"),
    "relu, float32": ({"activation": "relu"}, 512, True, "float32"),
    "relu, airbench widths 64-256-256": (
        {"activation": "relu", "widths": (64, 256, 256)},
        512,
        True,
        "mixed_bfloat16",
    ),
    "relu, XLA (jit_compile)": (
        {"activation": "relu"},
        512,
        True,
        "mixed_bfloat16",
        {"jit_compile": True},
    ),
    "relu, widths 48-128-128": (
        {"activation": "relu", "widths": (48, 128, 128)},
        512,
        True,
        "mixed_bfloat16",
    ),
    "relu, widths 32-128-192": (
        {"activation": "relu", "widths": (32, 128, 192)},
        512,
        True,
        "mixed_bfloat16",
    ),
    "relu, 24x24 input": ({"activation": "relu"}, 512, True, "mixed_bfloat16", {"side": 24}),
}


def measure(args: dict, batch: int, deterministic: bool, precision: str, *rest) -> float:
    """Median images/s of ``steps`` (the last argument) training steps, in a child process;
    an optional dict before it: ``jit_compile`` for ``model.compile``, ``side`` of the input."""
    options, steps = (rest[0], rest[1]) if len(rest) == 2 else ({}, rest[0])
    side = options.get("side", 32)
    import keras
    import numpy as np
    import tensorflow as tf

    from imgcls.models import create_model

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.config.set_dtype_policy(precision)
    model = create_model("fast", (side, side, 3), 10, **args)
    model.compile(
        jit_compile=options.get("jit_compile", "auto"),
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.2),
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch * 4, side, side, 3)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch * 4)]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # tracing and warm-up
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Clock()])
    return batch / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*VARIANTS[args.child], args.steps)))
        return
    rows = []
    for name in args.variants:
        out = subprocess.run(
            [sys.executable, __file__, "--child", name, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
            check=True,
        )
        rows.append({"variant": name, "images_per_s": round(json.loads(out.stdout), 1)})
        print(f"{name}: {rows[-1]['images_per_s']} img/s", flush=True)
    base = rows[0]["images_per_s"]
    print(f"\n{'variant':<36} {'img/s':>8} {'vs first':>9}")
    for r in rows:
        r["ratio"] = round(r["images_per_s"] / base, 3)
        print(f"{r['variant']:<36} {r['images_per_s']:>8.1f} {r['ratio']:>8.2f}x")
    write_result(
        "fast_step_throughput", {"steps": args.steps, "cpus": os.cpu_count(), "rows": rows}, RESULTS
    )


if __name__ == "__main__":
    main()
