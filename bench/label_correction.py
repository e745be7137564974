"""Fixing the data: how much of the accuracy lost to label noise do accepted corrections win back?

    python bench/label_correction.py [--n 10000] [--noise 0.10] [--seeds 0 1 2]

A class-balanced subset of N shared CIFAR-10 JPEGs becomes a folder per class (symbolic links,
nothing copied) with ``noise`` of the labels moved to another class at random; 5,000 other
images are a clean test set. Per seed, ``fast`` (its default recipe, ``--test-split 0``) trains
three times: on the true labels (**clean**), on the noisy folder (**noisy**), and on the noisy
folder after ``imgcls prepare --label-issues`` and every suggested relabel accepted through
``DATA/.imgcls/corrections.csv``, as the review page writes it (**corrected**). Each run is
scored on the clean test set with ``imgcls evaluate``. Reports accuracies, the share of the
accuracy lost to noise that correction recovers, and the corrections' precision (relabels that
restore the true class). Writes bench/results/label_correction.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
from _common import CIFAR, IMGCLS, RESULTS, ROOT, timed, train_and_score, write_result

sys.path.insert(0, str(ROOT / "src"))


def pick(n: int, n_test: int, seed: int) -> tuple[list, list, list[str]]:
    """``n`` training and ``n_test`` test ``(path, class)`` pairs, balanced, disjoint."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in CIFAR.iterdir() if p.is_dir())
    train, test = [], []
    for name in classes:
        files = sorted((CIFAR / name).glob("*.jpg"))
        order = rng.permutation(len(files))
        k, t = n // len(classes), n_test // len(classes)
        train += [(files[i], name) for i in order[:k]]
        test += [(files[i], name) for i in order[k : k + t]]
    return train, test, classes


def write_folder(root: Path, pairs: list, labels: list[str]) -> None:
    """``root/<label>/<i>.jpg`` links to the images (numbered: CIFAR's names repeat per class)."""
    shutil.rmtree(root, ignore_errors=True)
    for i, ((path, _), label) in enumerate(zip(pairs, labels, strict=True)):
        (root / label).mkdir(parents=True, exist_ok=True)
        os.symlink(path, root / label / f"{i:05d}.jpg")


def accept_suggestions(data: Path, work: Path, truth: dict[str, str]) -> dict:
    """``prepare --label-issues``, then every suggested relabel appended to the corrections file
    (as the review page does). Returns counts and the share that restore the true class."""
    from imgcls.data.corrections import append_decision, default_file
    from imgcls.data.hashing import sha256_file

    prepared = work / "prepared"
    shutil.rmtree(prepared, ignore_errors=True)
    timed([*IMGCLS, "prepare", str(data), "--out", str(prepared), "--label-issues", "--quiet"])
    report = json.loads((prepared / "report.json").read_text())
    issues = [i for i in report["issues"] if i["kind"] == "label_issue"]
    file = default_file(data)
    right = 0
    for issue in issues:
        full = Path(issue["path"]) if Path(issue["path"]).is_absolute() else data / issue["path"]
        path = os.path.relpath(full, data)
        append_decision(file, path, sha256_file(full), "relabel", issue["suggested"],
                        "suspected wrong label")  # fmt: skip
        right += truth[full.name] == issue["suggested"]
    return {"relabels": len(issues), "restoring_truth": right}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--n-test", type=int, default=5_000)
    p.add_argument("--noise", type=float, default=0.10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    if not CIFAR.is_dir():
        sys.exit(f"skipped: {CIFAR} not found")
    work = RESULTS / "label-correction"
    rows = []
    for seed in a.seeds:
        train, test, classes = pick(a.n, a.n_test, seed)
        rng = np.random.default_rng(1000 + seed)
        true = [c for _, c in train]
        noisy = list(true)
        for i in rng.choice(len(train), int(a.noise * len(train)), replace=False):
            noisy[i] = rng.choice([c for c in classes if c != true[i]])
        test_csv = work / f"test-{seed}.csv"
        test_csv.parent.mkdir(parents=True, exist_ok=True)
        test_csv.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in test))
        row = {"seed": seed, "flipped": sum(t != n for t, n in zip(true, noisy, strict=True))}
        write_folder(work / "clean", train, true)
        row["clean"] = train_and_score(work / "clean", test_csv, work / "run-clean", seed)
        write_folder(work / "noisy", train, noisy)
        row["noisy"] = train_and_score(work / "noisy", test_csv, work / "run-noisy", seed)
        truth = {f"{i:05d}.jpg": c for i, c in enumerate(true)}
        row.update(accept_suggestions(work / "noisy", work, truth))
        row["corrected"] = train_and_score(work / "noisy", test_csv, work / "run-corrected", seed)
        lost = row["clean"] - row["noisy"]
        row["recovered_share"] = (row["corrected"] - row["noisy"]) / lost if lost > 0 else None
        rows.append(row)
        print(row, flush=True)
    summary = {k: float(np.mean([r[k] for r in rows])) for k in ("clean", "noisy", "corrected")}
    lost = summary["clean"] - summary["noisy"]
    summary["recovered_share"] = (summary["corrected"] - summary["noisy"]) / lost if lost else None
    print("mean:", summary)
    record = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "n": a.n,
              "noise": a.noise, "rows": rows, "mean": summary}  # fmt: skip
    print(f"results: {write_result('label_correction', record)}")


if __name__ == "__main__":
    main()
