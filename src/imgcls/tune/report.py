"""What a search writes for people: ``DIR/trials.csv`` and ``DIR/report.html``, one offline
file (pictures are embedded PNGs, no scripts).

It shows the validation score of each trial and the best so far, the score against each
searched parameter, the best settings beside the recipe's, and the final test score with its
95% confidence interval.
"""

from __future__ import annotations

import csv
from typing import Any

import numpy as np

from imgcls.evaluate.plots import to_png
from imgcls.evaluate.report import _STYLE, _e, _img, _table
from imgcls.io import atomic_open, write_csv
from imgcls.tune.trials import OBJECTIVE, TRIAL_FIGURES


def write_trials_csv(search) -> None:
    """``DIR/trials.csv``: one row per ended trial, in the order they started, from the oracle
    (which holds every trial, also those that workers on other hosts ran). Under Hyperband,
    ``continues`` is the trial a promoted one went on from."""
    names = list(search.space)
    oracle = search.oracle
    hyperband = search.config.algorithm == "hyperband"
    rows = []
    for trial_id in oracle.start_order:
        if trial_id not in oracle.end_order:
            continue
        trial = oracle.trials[trial_id]
        figures = [
            trial.metrics.get_last_value(k) if trial.metrics.exists(k) else None
            for k in TRIAL_FIGURES
        ]
        values = trial.hyperparameters.values
        parent = values.get("tuner/trial_id")
        rows.append([
            int(trial_id) + 1, trial.status.lower(), _figure(trial.score),
            *[_figure(v) for v in figures], *[values.get(n, "") for n in names],
            *([int(parent) + 1 if parent is not None else ""] if hyperband else []),
        ])  # fmt: skip
    header = ["trial", "status", OBJECTIVE, *TRIAL_FIGURES, *names]
    header += ["continues"] if hyperband else []
    write_csv(search.path("trials.csv"), header, rows)


def _figure(value) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of an accuracy measured on ``n`` images."""
    if n <= 0:
        return [0.0, 1.0]
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(centre - half), 4), round(float(centre + half), 4)]


def write_report(search) -> None:
    """Write ``report.html`` from ``trials.csv`` and ``tune.json`` of ``search``."""
    record = search.record
    with open(search.path("trials.csv"), newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows, columns = list(reader), list(reader.fieldnames or [])
    done = [r for r in rows if r["status"] == "completed"]
    names = list(search.space)
    settings = record.settings
    test, best = record.test, record.best
    accuracy = test.accuracy if test.accuracy is not None else float("nan")
    parts = [
        f"<h1>Tuning {_e(settings['model'])} on {_e(settings['data'])}</h1>",
        '<section><div class="kpi">'
        f"<div>trials<b>{len(rows)}</b></div>"
        f"<div>best validation accuracy<b>{best.val_accuracy:.4f}</b></div>"
        f"<div>recipe's own (trial 1)<b>{_first_score(rows)}</b></div>"
        f"<div>test accuracy (read {test.reads}x)<b>{accuracy:.4f}</b>"
        f"<span class=muted>95% CI {test.ci95} on {test.n_images} images</span></div>"
        "</div>"
        f"<p class=muted>{_e(settings['algorithm'])} search, seed {settings['seed']}, final model: "
        f"{_e(settings['final'])} ({'best settings retrained on train+validation' if settings['final'] == 'retrain' else 'the best trial as it was'}). "
        f"The test split was read once, at {_e(test.at)}, after the search ended.</p></section>",
    ]
    if len(done):
        parts.append(
            f"<section><h2>Validation accuracy over trials</h2>{_img(_over_trials(done), 'scores')}</section>"
        )
        parts.append(
            f"<section><h2>Validation accuracy against each parameter</h2>"
            f"{_img(_against(done, search.space), 'parameters')}</section>"
        )
    best_rows = [
        [
            n,
            _fmt(best.values.get(n)),
            _fmt(record.defaults.get(n)),
            search.space[n].describe(),
        ]
        for n in names
    ]
    parts.append(
        "<section><h2>Best settings</h2>"
        + _table(
            ["parameter", f"best (trial {best.trial})", "recipe", "searched"],
            best_rows,
            9,
        )
        + f"<p class=muted>epochs run by the best trial: {best.epochs_run}</p></section>"
    )
    parts.append(
        "<section><h2>All trials</h2>"
        + _table(columns, [[_cell(r.get(h, "")) for h in columns] for r in rows], 2)
        + "</section>"
    )
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>imgcls tune {_e(settings['model'])}</title><style>{_STYLE}</style></head>"
        f"<body><main>{''.join(parts)}</main></body></html>"
    )
    with atomic_open(search.path("report.html"), "w", encoding="utf-8") as f:
        f.write(page)


def _first_score(rows: list[dict]) -> str:
    first = next((r for r in rows if r["trial"] == "1"), None)
    return first["val_accuracy"][:6] if first and first["val_accuracy"] else "n/a"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    """A number from trials.csv to 4 significant digits (other text as it is)."""
    try:
        value = float(text)
    except ValueError:
        return text
    return text if value.is_integer() and "." not in text else f"{value:.4g}"


def _over_trials(done: list[dict]) -> bytes:
    from matplotlib.figure import Figure

    x = [int(r["trial"]) for r in done]
    y = [float(r["val_accuracy"]) for r in done]
    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, y, "o", label="trial")
    ax.step(x, np.maximum.accumulate(y), where="post", label="best so far")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.legend(loc="lower right")
    return to_png(fig)


def _against(done: list[dict], space: dict) -> bytes:
    from matplotlib.figure import Figure

    names = list(space)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    y = [float(r["val_accuracy"]) for r in done]
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = [r[name] for r in done]
        try:
            x = [float(v) for v in values]
        except ValueError:  # a choice of strings
            x = values
        ax.plot(x, y, "o")
        if space[name].log:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("val accuracy")
    return to_png(fig)
