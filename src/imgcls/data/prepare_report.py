"""``report.html`` of ``imgcls prepare``: the report.json content for a person, in one file.

Thumbnails are embedded as base64 PNG and there are no external links, so the file can be
mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from imgcls.io import atomic_open

THUMB_SIDE = 64  # pixels: longest side of an embedded thumbnail
MAX_THUMBS = 400  # thumbnails embedded at most; later issue rows are listed without one
MAX_ROWS_PER_KIND = 2000  # rows shown per issue kind; report.json always has them all
KIND_ORDER = (
    "unreadable",
    "not_an_image",
    "too_large",
    "too_small",
    "conflicting_labels",
    "cross_split_duplicate",
    "exact_duplicate",
    "near_duplicate",
    "label_issue",
    "extension_mismatch",
    "converted",
    "empty_class",
    "class_imbalance",
    "ignored",
)
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:middle}th{background:#f3f3f3}
td.n{text-align:right}img{image-rendering:pixelated;max-width:64px;max-height:64px}.muted{color:#777}"""


def write_html(path: str | Path, report: dict, paths: dict[str, str]) -> None:
    """Write ``report`` as a self-contained HTML page, atomically.

    Args:
        path: the file to write.
        report: the ``report.json`` content.
        paths: issue ``path`` (an image id) -> file on disk, for thumbnails.
    """
    budget = [MAX_THUMBS]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>imgcls prepare report</title>"
        f"<style>{_STYLE}</style></head><body><h1>Data preparation report</h1>",
        f"<p>DATA: <code>{_e(report['data'])}</code><br>{report['n_usable']} usable images of "
        f"{report['n_files']} files ({report['n_left_out']} left out), cached at "
        f"{report['image_size'][0]}x{report['image_size'][1]}.</p>",
    ]
    if report.get("suggestions"):
        parts.append(
            "<h2>Suggestions</h2><ul>"
            + "".join(f"<li>{_e(s)}</li>" for s in report["suggestions"])
            + "</ul>"
        )
    parts.append(_counts_table(report))
    kinds = sorted(
        report["issue_counts"],
        key=lambda k: KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER),
    )
    if kinds:
        parts.append(
            "<h2>Issues</h2><ul>"
            + "".join(
                f"<li><a href='#{k}'>{k}</a>: {report['issue_counts'][k]}</li>" for k in kinds
            )
            + "</ul>"
        )
    for kind in kinds:
        rows = [r for r in report["issues"] if r["kind"] == kind]
        parts.append(_issue_table(kind, rows, paths, budget))
    parts.append("</body></html>\n")
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("".join(parts))


def _counts_table(report: dict) -> str:
    head = "<tr><th>class</th><th>train</th><th>val</th><th>test</th><th>total</th></tr>"
    body = "".join(
        f"<tr><td>{_e(name)}</td>"
        + "".join(f"<td class='n'>{c[s]}</td>" for s in ("train", "val", "test", "total"))
        + "</tr>"
        for name, c in report["counts"].items()
    )
    totals = report["split_counts"]
    foot = (
        f"<tr><th>all</th><th>{totals['train']}</th><th>{totals['val']}</th><th>{totals['test']}</th>"
        f"<th>{report['n_usable']}</th></tr>"
    )
    return f"<h2>Images per class and split</h2><table>{head}{body}{foot}</table>"


def _issue_table(kind: str, rows: list[dict], paths: dict[str, str], budget: list[int]) -> str:
    label_cols = kind == "label_issue"
    head = (
        "<tr><th></th><th>path</th>"
        + ("<th>given</th><th>suggested</th>" if label_cols else "")
        + "<th>detail</th></tr>"
    )
    body = []
    for row in rows[:MAX_ROWS_PER_KIND]:
        thumb = ""
        file = paths.get(row["path"])
        if (
            file
            and budget[0] > 0
            and kind not in ("unreadable", "not_an_image", "too_large", "ignored")
        ):
            thumb = _thumbnail(file)
            budget[0] -= bool(thumb)
        extra = (
            f"<td>{_e(row.get('given', ''))}</td><td>{_e(row.get('suggested', ''))}</td>"
            if label_cols
            else ""
        )
        body.append(
            f"<tr><td>{thumb}</td><td><code>{_e(row['path'])}</code></td>{extra}<td>{_e(row['detail'])}</td></tr>"
        )
    more = len(rows) - MAX_ROWS_PER_KIND
    tail = f"<p class='muted'>{more} more in report.json</p>" if more > 0 else ""
    return f"<h3 id='{kind}'>{kind} ({len(rows)})</h3><table>{head}{''.join(body)}</table>{tail}"


def _thumbnail(file: str) -> str:
    """An ``<img>`` with a base64 PNG of ``file``, or "" when it cannot be decoded."""
    from PIL import Image

    from imgcls.data.decode import read_image

    try:
        pixels, _ = read_image(file)
    except Exception:  # noqa: BLE001 - a thumbnail is decoration; the row is listed anyway
        return ""
    img = Image.fromarray(pixels)
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return f"<img alt='' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def _e(text: object) -> str:
    return html.escape(str(text))
