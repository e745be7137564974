"""What each inference engine does to the answers of a trained model, on images it never saw.

Trains ``fast`` with its recipe (the default precision: mixed_bfloat16 on a CPU with AMX,
saved in float32) on ``--images`` CIFAR-10 images, then predicts ``--test`` other CIFAR-10
images with every engine (``keras``, ``keras-bf16``, ``onnx``) and with an int8 ONNX export
(``imgcls export --quantize int8``, calibrated on 256 of the run's training images) on the same
decoded pixels, with the run's 6-view test-time augmentation and without. Reports accuracy,
top-1 agreement with ``keras`` and the largest and 99th-percentile |p - p_keras|. Speed is
bench/engines.py's job.

    python bench/engine_accuracy.py --images 20000 --epochs 10 --test 10000
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from _common import CIFAR, cifar_workspace, write_result


def pick(n: int, seed: int, exclude: set[str] = frozenset()) -> list[tuple[str, str]]:
    """``n`` CIFAR-10 (path, class) pairs, n/10 per class, none of ``exclude``."""
    rng = np.random.default_rng(seed)
    rows = []
    for cls in sorted(p.name for p in CIFAR.iterdir() if p.is_dir()):
        files = [f for f in sorted(str(p) for p in (CIFAR / cls).glob("*.jpg")) if f not in exclude]
        rows += [(files[i], cls) for i in rng.choice(len(files), n // 10, replace=False)]
    return rows


def int8_probabilities(run: Path, tta: bool, pixels: np.ndarray, out: Path, k: int) -> np.ndarray:
    import imgcls
    from imgcls.engine import OnnxEngine
    from imgcls.predict import run_batches

    path = imgcls.export(run, "onnx", out / f"int8-{tta}", tta=tta, quantize="int8")
    return run_batches(OnnxEngine(path), pixels, k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--test", type=int, default=10_000)
    p.add_argument("--out", type=Path, default=Path("/tmp/imgcls-bench-engine-accuracy"))
    a = p.parse_args()
    cifar_workspace(a.out)
    import imgcls
    from imgcls.data.decode import load_image
    from imgcls.engine import ENGINES

    train_rows = pick(a.images, seed=0)
    test_rows = pick(a.test, seed=1, exclude={path for path, _ in train_rows})
    manifest = a.out / "train.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in train_rows))
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    run = imgcls.train(str(manifest), out=a.out / "run", model="fast", epochs=a.epochs,
                       verbose=False).run_dir  # fmt: skip
    train_s = time.perf_counter() - t0
    pixels = np.stack([load_image(path, (32, 32)) for path, _ in test_rows])
    predictors = {e: imgcls.load(run, engine=e) for e in ENGINES}
    classes = predictors["keras"].classes_
    truth = np.array([classes.index(c) for _, c in test_rows])
    rows = []
    for tta in ("none", "flip_translate"):
        ref = predictors["keras"].predict_pixels(pixels, tta=tta)
        answers = {e: p.predict_pixels(pixels, tta=tta) for e, p in predictors.items()}
        answers["onnx-int8"] = int8_probabilities(run, tta != "none", pixels, a.out, len(classes))
        for engine, probs in answers.items():
            diff = np.abs(probs - ref)
            rows.append({
                "tta": tta,
                "engine": engine,
                "accuracy": float((probs.argmax(1) == truth).mean()),
                "top1_agreement_with_keras": float((probs.argmax(1) == ref.argmax(1)).mean()),
                "max_abs_diff": float(diff.max()),
                "p99_abs_diff": float(np.quantile(diff.max(1), 0.99)),
            })  # fmt: skip
            print(rows[-1], flush=True)
    print(
        f"\n{'tta':<15} {'engine':<11} {'accuracy':>9} {'agree':>7} {'max |dp|':>9} {'p99 |dp|':>9}"
    )
    for r in rows:
        print(f"{r['tta']:<15} {r['engine']:<11} {r['accuracy']:>9.4f} "
              f"{r['top1_agreement_with_keras']:>7.4f} {r['max_abs_diff']:>9.2e} "
              f"{r['p99_abs_diff']:>9.2e}")  # fmt: skip
    record = {
        "command": f"python bench/engine_accuracy.py --images {a.images} --epochs {a.epochs} "
        f"--test {a.test}",
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "load_1min_at_start": load0,
        "train_s": round(train_s, 1),
        "training_precision": imgcls.load(run).meta.config.get("precision"),
        "results": rows,
    }
    print(f"results: {write_result('engine_accuracy', record)}")


if __name__ == "__main__":
    main()
