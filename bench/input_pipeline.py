"""Is data loading ever the bottleneck? Input pipeline throughput vs training throughput.

Times (a) iterating one epoch of the real training `tf.data` pipeline alone (gather from the
in-memory uint8 array, flips, reflect-padded translations, one-hot) and (b) training steps of
`fast` and `classic` on the same batches. The pipeline's share of a step is its seconds per
image divided by training's seconds per image (below 100% it keeps up, since tf.data prefetches
in parallel with the step; the lower, the more headroom).
Synthetic 32x32 images (45,000, as CIFAR-10's training split), so decoding is not measured here.

Usage: python bench/input_pipeline.py [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _common import RESULTS, write_result  # noqa: E402

N_IMAGES = 45_000


def time_pipeline(x, y, batch: int, steps: int) -> float:
    from imgcls.data.pipeline import EpochPlan, train_dataset

    ds = train_dataset(x, y, EpochPlan(batch, 0, 0, ("flip", "translate")), num_classes=10)
    it = iter(ds)
    next(it)  # start-up excluded
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    return (time.perf_counter() - t0) / (steps * batch)


def time_training(model_name: str, x, y, batch: int, steps: int) -> float:
    import keras

    from imgcls.data.pipeline import EpochPlan, train_dataset
    from imgcls.models import create_model, get_spec
    from imgcls.train.precision import resolve_precision

    keras.config.set_dtype_policy(resolve_precision("auto"))
    model = create_model(model_name, (32, 32, 3), 10)
    get_spec(model_name).init_from_data(model, x[:2000], 0)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy"
    )
    ds = train_dataset(x, y, EpochPlan(batch, 0, 0, ("flip", "translate")), num_classes=10)
    model.fit(ds.take(3), verbose=0)  # compile and warm up
    t0 = time.perf_counter()
    model.fit(ds.skip(3).take(steps), verbose=0)
    return (time.perf_counter() - t0) / (steps * batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (N_IMAGES, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, N_IMAGES).astype(np.int32)
    rows = []
    for model_name, batch in (("fast", 512), ("classic", 64)):
        pipe = statistics.median(
            time_pipeline(x, y, batch, args.steps) for _ in range(args.repeats)
        )
        train = statistics.median(
            time_training(model_name, x, y, batch, args.steps // 2) for _ in range(args.repeats)
        )
        rows.append(
            {
                "model": model_name,
                "batch": batch,
                "pipeline_img_s": 1 / pipe,
                "train_img_s": 1 / train,
                "pipeline_share_of_step": pipe / train,
            }
        )
    print(
        f"{'model':<8} {'batch':>5} {'pipeline img/s':>15} {'train img/s':>12} {'pipeline share':>15}"
    )
    for r in rows:
        print(
            f"{r['model']:<8} {r['batch']:>5} {r['pipeline_img_s']:>15,.0f} {r['train_img_s']:>12,.0f} "
            f"{r['pipeline_share_of_step']:>14.1%}"
        )
    write_result("input_pipeline", {"repeats": args.repeats, "rows": rows}, Path(args.out))


if __name__ == "__main__":
    main()
