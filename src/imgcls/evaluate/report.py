"""``report.html``: one self-contained page a person can read, built in memory.

Every picture is an embedded base64 PNG; there are no scripts, no external style sheets and
no links out, so the file opens offline and can be mailed around. The page is assembled as
one string and written by the caller with an atomic rename.
"""

from __future__ import annotations

import base64
import csv
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.evaluate import plots

GALLERY_SIZE = 16  # worst mistakes shown as thumbnails
GRAD_CAM_IMAGES = 8  # mistakes explained with Grad-CAM (one batched gradient pass)
MAX_TABLE_CLASSES = 100  # per-class table rows; the rest are summarised
MAX_LEFT_OUT_ROWS = 20  # files left out that are listed by name

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#222}
main{max-width:1100px;margin:0 auto;padding:1.2em 1.5em 3em}
section{background:#fff;border:1px solid #e2e4e8;border-radius:8px;padding:.8em 1.2em;margin:1em 0}
h1{font-size:1.5em;margin:.4em 0}h2{font-size:1.2em;border-bottom:1px solid #eee;padding-bottom:.3em}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.2em .7em;border-bottom:1px solid #eee;text-align:left}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.kpi{display:flex;flex-wrap:wrap;gap:.8em}.kpi div{background:#eef2f8;border-radius:6px;padding:.4em .9em}
.kpi b{display:block;font-size:1.3em}.muted{color:#666;font-size:.85em}
.gallery{display:flex;flex-wrap:wrap;gap:.7em}.gallery figure{margin:0;width:200px;font-size:.8em;overflow-wrap:anywhere}
.gallery figure img{image-rendering:pixelated;border:1px solid #ccc}.gallery figure.cam{width:310px}
img.fig{max-width:100%;height:auto}code{font-size:.85em;word-break:break-all}
"""


@dataclass
class ReportInputs:
    """Everything the report shows; built by :func:`imgcls.evaluate.evaluate`.

    Attributes:
        metrics: the content of ``metrics.json``.
        run: the run folder (for ``history.csv``).
        pixels: decoded images in evaluation order.
        ids: id per image.
        y_true: true label per image.
        probs: probabilities used for the metrics (calibrated when a temperature is stored).
        raw_probs: probabilities before temperature scaling, or ``None`` when ``T = 1``.
        model: the Keras model, for Grad-CAM.
        calibration: the ``calibration`` record of ``bundle.json`` metrics, if any.
    """

    metrics: dict[str, Any]
    run: Path
    pixels: np.ndarray
    ids: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    raw_probs: np.ndarray | None
    model: Any
    calibration: dict[str, Any] = field(default_factory=dict)


def build_report(inputs: ReportInputs) -> str:
    """The whole HTML page as one string."""
    m = inputs.metrics
    title = f"imgcls evaluation: {Path(str(m['run'])).name} on {m['data']} ({m['split']})"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{_e(title)}</h1>",
        _summary(m),
        _dataset(m),
        _training(inputs.run),
        _confusion(m),
        _per_class(m),
        _calibration(inputs),
        *_mistakes(inputs),
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str, cls: str = "fig") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _short(text: str, keep: int = 40) -> str:
    """The end of a long id (the file name is the informative part)."""
    return text if len(text) <= keep else "\u2026" + text[-keep + 1 :]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    head = "".join(
        f"<th{' class=num' if i >= numeric_from else ''}>{_e(h)}</th>" for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if i >= numeric_from else ''}>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(m: dict[str, Any]) -> str:
    kpis = [
        ("accuracy", m["accuracy"]),
        (f"top-{m['top_k']} accuracy", m["top_k_accuracy"]),
        ("balanced accuracy", m["balanced_accuracy"]),
        ("macro F1", m["macro"]["f1"]),
        ("weighted F1", m["weighted"]["f1"]),
        ("log loss", m["log_loss"]),
        ("ECE", m["ece"]),
    ]
    boxes = "".join(f"<div>{_e(name)}<b>{_fmt(v)}</b></div>" for name, v in kpis)
    ck = m.get("checkpoint", {})
    return (
        f'<section id="summary"><h2>Summary</h2><div class="kpi">{boxes}</div>'
        f'<p class="muted">{m["n_images"]} images; temperature {_fmt(m.get("temperature", 1.0), 3)}; '
        f"test-time augmentation {m.get('tta') or 'none'}. "
        f"Model <code>{_e(ck.get('path', ''))}</code>, modified {_e(ck.get('mtime', ''))}, "
        f"sha256 <code>{_e(ck.get('sha256', ''))}</code>.</p></section>"
    )


def _dataset(m: dict[str, Any]) -> str:
    d = m.get("dataset", {})
    counts = d.get("class_counts", {})
    shown = sorted(counts.items(), key=lambda kv: -kv[1])[:MAX_TABLE_CLASSES]
    rows = [[name, n, _fmt(n / max(d.get("n_images", 1), 1), 3)] for name, n in shown]
    more = (
        f"<p class=muted>{len(counts) - len(shown)} more classes not listed.</p>"
        if len(counts) > len(shown)
        else ""
    )
    left = m.get("left_out", [])
    left_html = ""
    if left:
        items = "".join(
            f"<li><code>{_e(i['path'])}</code>: {_e(i['kind'])}: {_e(i['detail'])}</li>"
            for i in left[:MAX_LEFT_OUT_ROWS]
        )
        left_html = (
            f"<p>{len(left)} file(s) could not be decoded and were left out:</p><ul>{items}</ul>"
        )
    return (
        f'<section id="data"><h2>Data set</h2><p>DATA <code>{_e(d.get("argument", m["data"]))}</code> '
        f"(source <code>{_e(d.get('source', ''))}</code>), split <b>{_e(m['split'])}</b>: "
        f"{d.get('n_images', m['n_images'])} images in {sum(1 for n in counts.values() if n)} of "
        f"{len(m['class_names'])} classes. Fingerprint <code>{_e(d.get('fingerprint', ''))}</code>.</p>"
        f"{_table(['class', 'images', 'share'], rows)}{more}{left_html}</section>"
    )


def read_history(run: Path) -> list[dict[str, float]]:
    """Rows of ``RUN/history.csv`` as floats (empty cells dropped); ``[]`` when absent or unreadable."""
    from imgcls.bundle import RunFolder

    path = RunFolder(run).history
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [
                {k: float(v) for k, v in row.items() if k and v not in ("", None)}
                for row in csv.DictReader(f)
            ]
    except (OSError, ValueError):
        return []


def _training(run: Path) -> str:
    history = read_history(run)
    if not history:
        return '<section id="training"><h2>Training curves</h2><p>No readable history.csv in the run.</p></section>'
    last = history[-1]
    note = ", ".join(
        f"{k} {_fmt(last[k])}"
        for k in ("loss", "accuracy", "val_loss", "val_accuracy")
        if k in last
    )
    return (
        f'<section id="training"><h2>Training curves</h2>'
        f"{_img(plots.training_curves(history), 'loss and accuracy per epoch')}"
        f'<p class="muted">{len(history)} epochs; last epoch: {_e(note)}.</p></section>'
    )


def _confusion(m: dict[str, Any]) -> str:
    cm = np.asarray(m["confusion_matrix"])
    names = m["class_names"]
    off = cm - np.diag(np.diag(cm))
    pairs = np.dstack(np.unravel_index(np.argsort(-off, axis=None, kind="stable"), off.shape))[0][
        :10
    ]
    rows = [[names[i], names[j], int(off[i, j])] for i, j in pairs if off[i, j] > 0]
    top = (
        f"<h3>Most frequent confusions</h3>{_table(['true', 'predicted as', 'images'], rows, 2)}"
        if rows
        else ""
    )
    return (
        f'<section id="confusion"><h2>Confusion matrix</h2>'
        f"{_img(plots.confusion_heatmap(cm, names), 'confusion matrix heat map')}{top}</section>"
    )


def _per_class(m: dict[str, Any]) -> str:
    pc = m["per_class"]
    shown = sorted(pc, key=lambda c: pc[c]["f1"])[:MAX_TABLE_CLASSES]
    rows = [
        [
            c,
            _fmt(pc[c]["precision"], 3),
            _fmt(pc[c]["recall"], 3),
            _fmt(pc[c]["f1"], 3),
            pc[c]["support"],
        ]
        for c in shown
    ]
    avg = [
        [
            name,
            _fmt(m[name]["precision"], 3),
            _fmt(m[name]["recall"], 3),
            _fmt(m[name]["f1"], 3),
            m["n_images"],
        ]
        for name in ("macro", "weighted")
    ]
    return (
        f'<section id="per-class"><h2>Per-class precision, recall and F1</h2>'
        f"{_img(plots.per_class_bars(pc), 'per-class bars')}"
        f'<p class="muted">Table sorted from the lowest F1; macro and weighted averages last.</p>'
        f"{_table(['class', 'precision', 'recall', 'F1', 'support'], rows + avg)}</section>"
    )


def _calibration(inputs: ReportInputs) -> str:
    from imgcls.evaluate.metrics import calibration, log_loss

    m = inputs.metrics
    panels = []
    rows = []
    if inputs.raw_probs is not None:
        before = calibration(inputs.y_true, inputs.raw_probs)
        panels.append(("before temperature scaling", before["ece_bins"], before["ece"]))
        rows.append(
            [
                "this data, T = 1",
                _fmt(log_loss(inputs.y_true, inputs.raw_probs)),
                _fmt(before["ece"]),
            ]
        )
    panels.append(
        (
            f"T = {m.get('temperature', 1.0):.3g}"
            if inputs.raw_probs is not None
            else "probabilities",
            m["ece_bins"],
            m["ece"],
        )
    )
    rows.append(
        [f"this data, T = {m.get('temperature', 1.0):.3g}", _fmt(m["log_loss"]), _fmt(m["ece"])]
    )
    cal = inputs.calibration
    if cal:
        rows.append(
            [
                f"fit set ({cal.get('split')}, {cal.get('n_images')} images), before",
                _fmt(cal.get("nll_before")),
                _fmt(cal.get("ece_before")),
            ]
        )
        rows.append(["fit set, after", _fmt(cal.get("nll_after")), _fmt(cal.get("ece_after"))])
    note = (
        "No temperature is stored; run <code>imgcls calibrate RUN</code> to fit one on the validation split."
        if inputs.raw_probs is None
        else f"Left: before temperature scaling; right: after, with the "
        f"temperature T = {m.get('temperature', 1.0):.3g} fitted by <code>imgcls calibrate</code>."
    )
    return (
        f'<section id="calibration"><h2>Calibration</h2>'
        f"{_img(plots.reliability_diagram(panels), 'reliability diagram')}"
        f'<p class="muted">{len(m["ece_bins"])} equal-width confidence bins. {note}</p>'
        f"{_table(['probabilities', 'log loss', 'ECE'], rows)}</section>"
    )


def worst_mistakes(y_true: np.ndarray, probs: np.ndarray, n: int = GALLERY_SIZE) -> np.ndarray:
    """Indices of wrong predictions, most confident first."""
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    return wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][:n]


def _mistakes(inputs: ReportInputs) -> list[str]:
    names = inputs.metrics["class_names"]
    worst = worst_mistakes(inputs.y_true, inputs.probs)
    if not len(worst):
        return [
            '<section id="mistakes"><h2>Worst mistakes</h2><p>No mistakes on this data.</p></section>'
        ]
    y_pred = inputs.probs.argmax(axis=1)
    cards = []
    for i in worst:
        t, p = int(inputs.y_true[i]), int(y_pred[i])
        cards.append(
            f"<figure>{_img(plots.array_png(inputs.pixels[i]), inputs.ids[i], 'thumb')}<figcaption>"
            f"true <b>{_e(names[t])}</b> ({_fmt(float(inputs.probs[i, t]), 3)})<br>predicted "
            f"<b>{_e(names[p])}</b> ({_fmt(float(inputs.probs[i, p]), 3)})<br>"
            f'<span class="muted" title="{_e(inputs.ids[i])}">{_e(_short(inputs.ids[i]))}</span>'
            f"</figcaption></figure>"
        )
    gallery = (
        f'<section id="mistakes"><h2>Worst mistakes</h2><p class="muted">{len(worst)} of '
        f"{int((y_pred != inputs.y_true).sum())} wrong predictions, most confident first.</p>"
        f'<div class="gallery">{"".join(cards)}</div></section>'
    )
    return [gallery, _grad_cam_section(inputs, worst[:GRAD_CAM_IMAGES], y_pred)]


def _grad_cam_section(inputs: ReportInputs, index: np.ndarray, y_pred: np.ndarray) -> str:
    from imgcls.errors import ImgclsError
    from imgcls.evaluate.explain import conv_layers, grad_cam

    names = inputs.metrics["class_names"]
    try:
        layer = conv_layers(inputs.model)[-1]
        pixels = inputs.pixels[index]
        cams = grad_cam(
            inputs.model,
            np.concatenate([pixels, pixels]),
            np.concatenate([y_pred[index], inputs.y_true[index]]),
            target=layer,
        )
    except ImgclsError as e:
        return f'<section id="grad-cam"><h2>Grad-CAM</h2><p>Not available for this model: {_e(e)}</p></section>'
    k = len(index)
    cards = []
    for j, i in enumerate(index):
        pred_png = plots.array_png(plots.overlay(pixels[j], cams[j]))
        true_png = plots.array_png(plots.overlay(pixels[j], cams[k + j]))
        cards.append(
            f'<figure class="cam">{_img(plots.array_png(pixels[j]), inputs.ids[i], "thumb")} '
            f"{_img(pred_png, 'Grad-CAM predicted', 'thumb')} {_img(true_png, 'Grad-CAM true', 'thumb')}"
            f"<figcaption>image; evidence for predicted <b>{_e(names[y_pred[i]])}</b> "
            f"({_fmt(float(inputs.probs[i, y_pred[i]]), 3)}); evidence for true "
            f"<b>{_e(names[inputs.y_true[i]])}</b></figcaption></figure>"
        )
    return (
        f'<section id="grad-cam"><h2>Grad-CAM on the worst mistakes</h2><p class="muted">Where layer '
        f"<code>{_e(layer.name)}</code> found evidence for each class (red: strongest).</p>"
        f'<div class="gallery">{"".join(cards)}</div></section>'
    )
