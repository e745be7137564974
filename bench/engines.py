"""Inference speed of a bundle: Keras (TensorFlow) in float32 and in bfloat16, ONNX Runtime in
float32 and on an int8 export, same images, one run.

For `fast` and `classic` at 32x32 (10 classes), without and with the bundle's test-time
augmentation baked into the graph, and for the photo default `efficientnet_lite0` at 224x224
with its 2 views: images/s at batch 256 (64 for the 224x224 model) and the latency of one image
(batch 1), median of ``--repeats`` timed calls after a warm-up. The models are trained for one
epoch on random images (Lite0 from random weights): speed does not depend on the weights (what
bfloat16 and int8 do to the answers of a trained model: bench/engine_accuracy.py).

    python bench/engines.py
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, write_result

sys.path.insert(0, str(ROOT))


def timed_median(fn, repeats: int) -> float:
    fn()  # warm-up (tracing, session set-up)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


MODELS = {  # model -> (side, batch timed, test-time views measured)
    "fast": (32, 256, ("none", "flip_translate")),
    "classic": (32, 256, ("none",)),
    "efficientnet_lite0": (224, 64, ("flip",)),
}


def make_run(model: str, base: Path, side: int) -> Path:
    import imgcls
    from tests.conftest import write_folder

    data = base / "data"
    if not data.exists():
        write_folder(data, classes=[f"c{i}" for i in range(10)], per_class=60)
    extra = {"weights": "none", "epochs": 1} if model == "efficientnet_lite0" else {"epochs": 1}
    return imgcls.train(str(data), out=base / model, model=model, image_size=(side, side),
                        precision="float32", verbose=False, **extra).run_dir  # fmt: skip


def measure(run: Path, tta: str, repeats: int, side: int, batch: int) -> list[dict]:
    import imgcls
    from imgcls.engine import ENGINES, KerasEngine, OnnxEngine
    from imgcls.predict import Predictor

    xb = np.random.default_rng(0).integers(0, 256, (batch, side, side, 3)).astype(np.float32)
    x1 = xb[:1]
    runners = {name: Predictor(run, engine=name).runner(tta) for name in ENGINES}
    int8 = imgcls.export(run, "onnx", run / f"int8-{tta}", tta=tta != "none", quantize="int8")
    runners["onnx-int8"] = OnnxEngine(int8)  # calibrated on the run's (random) training images
    keras_runner = runners["keras"]
    model = keras_runner.model
    rows = []
    for name, engine in runners.items():
        big = timed_median(lambda e=engine: e(xb), repeats)
        one = timed_median(lambda e=engine: e(x1), repeats * 4)
        rows.append({"engine": name, "batch": batch, "images_per_s": batch / big,
                     "latency_ms_b1": one * 1000})  # fmt: skip
    call = timed_median(lambda: model(x1, training=False), repeats * 4)  # eager call, no predict
    rows[0]["latency_ms_b1_eager_call"] = call * 1000
    assert isinstance(keras_runner, KerasEngine)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="imgcls-bench-engines-"))
    results = []
    try:
        for model, (side, batch, tta_modes) in MODELS.items():
            run = make_run(model, base, side)
            for tta in tta_modes:
                for row in measure(run, tta, a.repeats, side, batch):
                    results.append({"model": model, "tta": tta, **row})
                    print(results[-1], flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"\n{'model':<18} {'tta':<15} {'engine':<10} {'batch':>5} {'img/s':>8} {'ms b1':>7} {'vs keras':>9}"
    )
    for r in results:
        base_row = next(
            x
            for x in results
            if x["model"] == r["model"] and x["tta"] == r["tta"] and x["engine"] == "keras"
        )
        ratio = r["images_per_s"] / base_row["images_per_s"]
        print(f"{r['model']:<18} {r['tta']:<15} {r['engine']:<10} {r['batch']:>5} {r['images_per_s']:>8,.0f} "
              f"{r['latency_ms_b1']:>7.2f} {ratio:>8.2f}x")  # fmt: skip
    record = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "load_before": os.getloadavg(),
        "results": results,
    }
    print(f"results: {write_result('engines', record)}")


if __name__ == "__main__":
    main()
