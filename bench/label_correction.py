"""Fixing the data: how much of the accuracy lost to label noise do accepted corrections win back?

    python bench/label_correction.py [--n 5000] [--noise 0.10] [--seeds 0 1 2] [--arms ...]

A class-balanced subset of N shared CIFAR-10 JPEGs becomes a folder per class (symbolic links,
nothing copied) with ``noise`` of the labels moved to another class at random; 5,000 other
images are a clean test set. Per seed, ``fast`` (its default recipe, ``--test-split 0``) trains
on the true labels (**clean**), on the noisy folder (**noisy**), and on the noisy folder with
every suggestion of ``imgcls prepare --label-issues`` accepted through a corrections file, as
the review page's ``a`` key writes it (a relabel, or leaving the image out where the model is
unsure), with the suggestions from

- **quick**: prepare's own k-fold cross-validation of its quick model (no training needed);
- **halves**: two ``fast`` runs, each trained on one half of the noisy folder
  (``--split-file``), passed as ``--from-run A B`` so every image is scored by the run that
  never saw it;
- **pretrained**: the same with two runs of a pretrained backbone (``efficientnet_lite0``, its
  default recipe, offline ImageNet weights): the better scorer a person with a GPU-less
  machine has at hand.

Each arm is retrained twice: with every suggested fix accepted, and with only the confident
relabels accepted (``<arm>_relabels``: a person who keeps the images the model is unsure of).
``--arms`` picks the arms (each costs retraining).

Each run is scored on the clean test set with ``imgcls evaluate``. Reports accuracies, the
share of the accuracy lost to noise that each correction recovers, and what the suggestions
did (relabels that restore the true class, flipped images left out, clean images left out).
Writes bench/results/label_correction.json.
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
from _common import (
    CIFAR,
    IMGCLS,
    RESULTS,
    ROOT,
    link_images,
    timed,
    train_and_score,
    write_manifest,
    write_result,
)

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
    """``root/<label>/<i>.jpg`` links to the images of ``pairs``, filed under ``labels``."""
    link_images(
        root,
        [(i, path, label) for i, ((path, _), label) in enumerate(zip(pairs, labels, strict=True))],
    )


def accept_suggestions(data: Path, work: Path, truth: dict[str, str], *flags: str) -> dict:
    """``prepare --label-issues`` (with ``flags``), then every suggested fix appended to
    ``work/corrections.csv`` as the review page does. Returns the file and what the fixes did."""
    from imgcls.data.corrections import append_decision
    from imgcls.data.hashing import sha256_file

    prepared = work / "prepared"
    shutil.rmtree(prepared, ignore_errors=True)
    timed([*IMGCLS, "prepare", str(data), "--out", str(prepared), "--label-issues", "--quiet",
           *flags])  # fmt: skip
    report = json.loads((prepared / "report.json").read_text())
    file = work / "corrections.csv"
    file.unlink(missing_ok=True)
    counts = {"flagged": 0, "relabels": 0, "restoring_truth": 0, "excluded": 0,
              "excluded_flipped": 0, "flipped_found": 0}  # fmt: skip
    for issue in (i for i in report["issues"] if i["kind"] == "label_issue"):
        full = Path(issue["path"]) if Path(issue["path"]).is_absolute() else data / issue["path"]
        label, flipped = issue.get("suggested", ""), truth[full.name] != full.parent.name
        action = issue.get("action", "relabel")
        append_decision(file, os.path.relpath(full, data), sha256_file(full), action,
                        label if action == "relabel" else "", "suspected wrong label")  # fmt: skip
        counts["flagged"] += 1
        counts["flipped_found"] += flipped
        if action == "relabel":
            counts["relabels"] += 1
            counts["restoring_truth"] += truth[full.name] == label
        else:
            counts["excluded"] += 1
            counts["excluded_flipped"] += flipped
    return {"file": str(file), **counts}


def train_halves(data: Path, work: Path, seed: int, model: str = "fast") -> list[str]:
    """Two ``model`` runs on the noisy folder, each on one half (``--split-file``)."""
    ids = sorted(str(p.relative_to(data)) for p in data.glob("*/*.jpg"))
    runs = []
    work.mkdir(parents=True, exist_ok=True)
    for half in (0, 1):
        split = work / f"half-{half}.csv"
        split.write_text("id,label,split\n" + "".join(
            f"{i},{i.split('/')[0]},train\n" for k, i in enumerate(ids) if k % 2 == half))  # fmt: skip
        run = work / f"run-half-{half}"
        shutil.rmtree(run, ignore_errors=True)
        timed([*IMGCLS, "train", str(data), "--out", str(run), "--model", model, "--seed",
               str(seed), "--split-file", str(split), "--quiet"])  # fmt: skip
        runs.append(str(run))
    return runs


ARMS = {"quick": None, "halves": "fast", "pretrained": "efficientnet_lite0"}  # arm -> scorer


def relabels_only(file: Path, out: Path) -> Path:
    """``file``'s relabel rows alone, as ``out`` (the same header)."""
    lines = file.read_text().splitlines()
    out.write_text("\n".join([lines[0], *(x for x in lines[1:] if ",relabel," in x)]) + "\n")
    return out


def recovered(row: dict, key: str) -> float | None:
    lost = row["clean"] - row["noisy"]
    return (row[key] - row["noisy"]) / lost if lost > 0 else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5_000)
    p.add_argument("--n-test", type=int, default=5_000)
    p.add_argument("--noise", type=float, default=0.10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--out", default="label_correction", help="results name (bench/results/)")
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
        test_csv = write_manifest(work / f"test-{seed}.csv", test)
        row = {"seed": seed, "flipped": sum(t != n for t, n in zip(true, noisy, strict=True))}
        write_folder(work / "clean", train, true)
        row["clean"] = train_and_score(work / "clean", test_csv, work / "run-clean", seed)
        write_folder(work / "noisy", train, noisy)
        row["noisy"] = train_and_score(work / "noisy", test_csv, work / "run-noisy", seed)
        truth = {f"{i:05d}.jpg": c for i, c in enumerate(true)}
        for arm in a.arms:
            scorer = ARMS[arm]
            flags = [] if scorer is None else [
                "--from-run", *train_halves(work / "noisy", work / arm, seed, scorer)]  # fmt: skip
            row[f"{arm}_fixes"] = fixes = accept_suggestions(work / "noisy", work / arm, truth,
                                                             *flags)  # fmt: skip
            row[arm] = train_and_score(work / "noisy", test_csv, work / f"run-{arm}", seed,
                                       "--corrections", fixes["file"])  # fmt: skip
            only = relabels_only(Path(fixes["file"]), work / arm / "relabels.csv")
            row[f"{arm}_relabels"] = train_and_score(work / "noisy", test_csv,
                                                     work / f"run-{arm}-relabels", seed,
                                                     "--corrections", str(only))  # fmt: skip
            for key in (arm, f"{arm}_relabels"):
                row[f"{key}_recovered_share"] = recovered(row, key)
        rows.append(row)
        print(row, flush=True)
        write_result(a.out, {"n": a.n, "noise": a.noise, "rows": rows})
    keys = ["clean", "noisy", *a.arms, *(f"{arm}_relabels" for arm in a.arms)]
    summary = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    for key in keys[2:]:
        summary[f"{key}_recovered_share"] = recovered(summary, key)
    print("mean:", summary)
    record = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "n": a.n,
              "noise": a.noise, "arms": a.arms, "rows": rows, "mean": summary}  # fmt: skip
    print(f"results: {write_result(a.out, record)}")


if __name__ == "__main__":
    main()
