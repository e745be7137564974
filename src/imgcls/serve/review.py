"""``imgcls review DATA``: a local page over what ``prepare`` (and, with ``--run``, the model)
found in DATA, where each finding is decided with a key press and appended at once to the
corrections file (:mod:`imgcls.data.corrections`). The images are never moved or changed.

``imgcls review DATA --label suggest.csv`` (labeling mode) lists instead the images of a
``suggest.csv`` of ``imgcls suggest``, best first, each with the model's guess: a key press gives
one a class of DATA, appended as an ``add`` row; its file stays where it is and the next
``imgcls train DATA`` includes it. One page and one :class:`Review` serve both modes: an item
points at a target (its id in the corrections file and its image file).

Routes (behind the same guard, limits and JSON errors as ``imgcls serve``):
    ``GET /``                   the page (static/review.html)
    ``GET /api/items``          the items (findings worst first, grouped by kind; or the images
                                to label in rank order) with each one's current label, the
                                suggestion and the decision in force
    ``GET /api/thumb/{i}``      target ``i`` as a PNG of at most 256 px
    ``POST /api/decide``        ``{"index": i, "action": "relabel|exclude|keep|undo", "label":
                                ...}`` (labeling mode: ``add|undo``): appended to the file
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from imgcls.data.corrections import (
    ACTIONS,
    append_decision,
    default_file,
    read_corrections,
)
from imgcls.errors import check
from imgcls.io import open_csv
from imgcls.serve.service import ApiError, json_body, shown

STATIC = Path(__file__).parent / "static"
THUMB_SIDE = 256
# Worst first: what the model or the data says is wrong, then what leaks or repeats, then files.
GROUPS = {
    "label_issue": (0, "suspected wrong label"),
    "conflicting_labels": (1, "conflicting duplicates"),
    "cross_split_duplicate": (2, "near duplicates across splits"),
    "near_duplicate": (3, "near duplicates"),
    "exact_duplicate": (3, "near duplicates"),
}
OTHER_GROUP = (4, "unreadable or odd files")
REVIEW_ACTIONS = tuple(a for a in ACTIONS if a != "add")
LABEL_ACTIONS = ("add", "undo")


class Review:
    """DATA's images (labels as the corrections file leaves them), the items to decide on and the
    file. ``targets[i]`` is ``(id, image file)``: DATA's images, or in labeling mode the CSV's;
    an item's ``index`` points into it."""

    def __init__(self, data, run, corrections, label: str | Path | None = None):
        from imgcls.data.sources import load_source

        check(not (run and label), "--run has no use with --label: the CSV has the guesses")
        self.root = Path(data).resolve()
        self.file = Path(corrections) if corrections else default_file(self.root)
        self.images = load_source(self.root, corrections=False)  # the originals
        self.index = {image_id: i for i, image_id in enumerate(self.images.ids)}
        self.labeling = label is not None
        if self.labeling:
            self.targets, self.items = self.to_label(Path(label))
        else:
            self.targets = list(zip(self.images.ids, self.images.paths, strict=True))
            self.items = self.findings(run)
        self.actions = LABEL_ACTIONS if self.labeling else REVIEW_ACTIONS

    def findings(self, run) -> list[dict]:
        """One item per image with a finding of ``prepare`` (label issues from RUN's
        predictions when given), sorted by group and then as ``prepare`` ranked them."""
        from imgcls.data.prepare import prepare
        from imgcls.predict import RunProbabilities

        probabilities = RunProbabilities(run) if run else None
        with tempfile.TemporaryDirectory(prefix="imgcls-review-") as out:
            report = prepare(self.root, out, label_issues=True, probabilities=probabilities,
                             on_error="skip").report  # fmt: skip
        names = self.images.class_names
        items, seen = [], set()
        for rank, issue in enumerate(report["issues"]):
            i = self._image_of(issue)
            if i is None or i in seen:
                continue
            seen.add(i)
            order, group = GROUPS.get(issue["kind"], OTHER_GROUP)
            items.append({
                "index": i, "id": self.images.ids[i], "kind": issue["kind"], "group": group,
                "order": (order, rank), "detail": issue.get("detail", ""),
                "label": names[self.images.labels[i]], "suggested": issue.get("suggested"),
                "confidence": issue.get("suggested_probability"),
                "fix": issue.get("action", "relabel" if issue.get("suggested") else None),
            })  # fmt: skip
        items.sort(key=lambda item: item.pop("order"))
        return items

    def to_label(self, csv_file: Path) -> tuple[list[tuple[str, str]], list[dict]]:
        """The targets and items of a suggest.csv (``path`` and, when there, ``rank``, ``guess``
        and ``confidence``), in rank order; each path made absolute (a relative one starts at the
        working folder, as ``imgcls suggest`` wrote it) and not an image of DATA.

        Raises:
            ImgclsError: the file is missing, has no ``path`` column, or a row names a file that
                does not exist or is already in DATA (naming the row).
        """
        what = f"--label {csv_file}"
        check(csv_file.is_file(), f"{what}: no such file (a suggest.csv of `imgcls suggest`)")
        with open_csv(csv_file, what) as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            check("path" in columns, f"{what}: the CSV must have a `path` column (as "
                                     f"`imgcls suggest` writes it). Received: {columns}")  # fmt: skip
            rows = [(reader.line_num, row) for row in reader]  # the header is row 1
        check(bool(rows), f"{what}: no images listed")
        targets, items = [], []
        for n, row in rows:
            path = os.path.abspath(os.path.expanduser((row.get("path") or "").strip()))
            check(os.path.isfile(path), f"{what} row {n}: {row.get('path')!r} does not exist")
            self._check_outside(path, f"{what} row {n}")
            rank = _number(row.get("rank"))
            items.append({
                "index": len(targets), "id": path, "kind": "to_label", "group": "to label",
                "order": (math.inf if rank is None else rank, n), "label": None,
                "detail": f"rank {row.get('rank') or n - 1} of {csv_file.name}",
                "suggested": (row.get("guess") or "").strip() or None,
                "confidence": _number(row.get("confidence")),
            })  # fmt: skip
            targets.append((path, path))
        items.sort(key=lambda item: item.pop("order"))  # rows without a rank after, as listed
        return targets, items

    def _check_outside(self, path: str, where: str) -> None:
        """Refuse a CSV image that DATA already has (its place is the normal mode)."""
        real = Path(path).resolve()
        if real.is_relative_to(self.root):
            check(
                str(real.relative_to(self.root)) not in self.index,
                f"{where}: {path} is already in DATA; review it without --label",
            )

    def _image_of(self, issue: dict) -> int | None:
        path = str(issue.get("path", ""))
        if path in self.index:
            return self.index[path]
        try:
            return self.index.get(str(Path(path).resolve().relative_to(self.root)))
        except ValueError:
            return None

    def state(self) -> dict[str, Any]:
        """The items with each one's label now and the decision in force (from the file)."""
        decided = {}
        if self.file.is_file():
            decided = {c.path: c for c in read_corrections(self.file, self.images.class_names)}
        items = []
        for item in self.items:
            c = decided.get(item["id"])
            items.append({**item, "decision": None if c is None else {"action": c.action,
                                                                      "label": c.label}})  # fmt: skip
        left = sum(1 for item in items if item["decision"] is None)
        return {"classes": self.images.class_names, "items": items, "left": left,
                "file": str(self.file), "mode": "label" if self.labeling else "review"}  # fmt: skip

    def decide(self, body: dict) -> dict[str, Any]:
        """Append one decision (422 for a wrong field) and answer the new state."""
        from imgcls.data.hashing import sha256_file

        i, action, label = body.get("index"), body.get("action"), body.get("label") or ""
        if not isinstance(i, int) or not 0 <= i < len(self.targets):
            raise ApiError(422, f"`index` must be an image index. Received: index={shown(i)}")
        if action not in self.actions:
            mode = " in labeling mode" if self.labeling else ""
            raise ApiError(422, f"`action` must be one of {', '.join(self.actions)}{mode}. "
                                f"Received: action={shown(action)}")  # fmt: skip
        if action in ("relabel", "add") and label not in self.images.class_names:
            raise ApiError(
                422, f"`label` must be one of the classes. Received: label={shown(label)}"
            )
        image_id, path = self.targets[i]
        digest = "" if action == "undo" else sha256_file(path)
        reason = next((item["group"] for item in self.items if item["index"] == i), "")
        append_decision(self.file, image_id, digest, action, label, reason)
        return self.state()

    def thumbnail(self, i: int) -> bytes:
        from imgcls.data.decode import DecodeError, load_image

        if not 0 <= i < len(self.targets):
            raise ApiError(404, f"no image {i}")
        image_id, path = self.targets[i]
        try:
            pixels = load_image(path)
        except DecodeError as e:
            raise ApiError(415, f"{image_id}: {e.detail}") from None
        from PIL import Image

        img = Image.fromarray(pixels)
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()


def _number(text) -> float | None:
    """A CSV field as a finite number, or None (a NaN would not survive the JSON answer)."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def create_review_app(data, run=None, corrections=None, config=None, label=None) -> FastAPI:
    """The ASGI app of ``imgcls review`` (see the module); ``label``: a suggest.csv to label."""
    from imgcls.serve.errors import add_error_handlers
    from imgcls.serve.guard import Guard
    from imgcls.serve.limits import BodyLimit, ServeConfig
    from imgcls.serve.metrics import Metrics

    config = (config or ServeConfig()).validate()
    review = Review(data, run, corrections, label)
    app = FastAPI(title="imgcls review", docs_url=None, redoc_url=None)
    app.state.review = review
    app.include_router(router())
    add_error_handlers(app, config)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(Guard, service=_GuardView(config, Metrics()))
    return app


class _GuardView:
    """What :class:`~imgcls.serve.guard.Guard` reads of a service: its limits and metrics."""

    def __init__(self, config, metrics):
        self.config, self.metrics = config, metrics


def router() -> APIRouter:
    r = APIRouter()
    page = (STATIC / "review.html").read_text(encoding="utf-8")

    @r.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @r.get("/api/items")
    async def items(request: Request):
        return request.app.state.review.state()

    @r.get("/api/thumb/{i}")
    async def thumb(request: Request, i: int):
        png = request.app.state.review.thumbnail(i)
        return Response(png, media_type="image/png")

    @r.post("/api/decide")
    async def decide(request: Request):
        return request.app.state.review.decide(json_body(await request.body()))

    return r
