"""``imgcls review DATA``: a local page over what ``prepare`` (and, with ``--run``, the model)
found in DATA, where each finding is decided with a key press and appended at once to the
corrections file (:mod:`imgcls.data.corrections`). The images are never moved or changed.

Routes (behind the same guard, limits and JSON errors as ``imgcls serve``):
    ``GET /``                   the page (static/review.html)
    ``GET /api/items``          the findings, worst first, grouped by kind, with each image's
                                current label, the suggestion and the decision in force
    ``GET /api/thumb/{i}``      image ``i`` as a PNG of at most 256 px
    ``POST /api/decide``        ``{"index": i, "action": "relabel|exclude|keep|undo",
                                "label": ...}``: appended to the corrections file
"""

from __future__ import annotations

import io
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


class Review:
    """DATA's images (labels as the corrections file leaves them), the findings and the file."""

    def __init__(self, data: str | Path, run: str | Path | None, corrections: Path | None):
        from imgcls.data.sources import load_source

        self.root = Path(data).resolve()
        self.file = Path(corrections) if corrections else default_file(self.root)
        self.images = load_source(self.root, corrections=False)  # the originals
        self.index = {image_id: i for i, image_id in enumerate(self.images.ids)}
        self.items = self.findings(run)

    def findings(self, run) -> list[dict]:
        """One item per image with a finding of ``prepare`` (label issues from RUN's
        predictions when given), sorted by group and then as ``prepare`` ranked them."""
        from imgcls.data.prepare import prepare
        from imgcls.predict import RunProbabilities

        probabilities = RunProbabilities(run) if run else None
        with tempfile.TemporaryDirectory(prefix="imgcls-review-") as out:
            report = prepare(self.root, out, label_issues=True, probabilities=probabilities,
                             on_error="skip").report  # fmt: skip
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
                "suggested": issue.get("suggested"),
                "confidence": issue.get("suggested_probability"),
            })  # fmt: skip
        items.sort(key=lambda item: item.pop("order"))
        return items

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
        names = self.images.class_names
        items = []
        for item in self.items:
            c = decided.get(item["id"])
            items.append({**item, "label": names[self.images.labels[item["index"]]],
                          "decision": None if c is None else {"action": c.action,
                                                              "label": c.label}})  # fmt: skip
        left = sum(1 for item in items if item["decision"] is None)
        return {"classes": names, "items": items, "left": left, "file": str(self.file)}

    def decide(self, body: dict) -> dict[str, Any]:
        """Append one decision (422 for a wrong field) and answer the new state."""
        from imgcls.data.hashing import sha256_file

        i, action, label = body.get("index"), body.get("action"), body.get("label") or ""
        if not isinstance(i, int) or not 0 <= i < len(self.images):
            raise ApiError(422, f"`index` must be an image index. Received: index={shown(i)}")
        if action not in ACTIONS:
            raise ApiError(422, f"`action` must be one of {', '.join(ACTIONS)}. "
                                f"Received: action={shown(action)}")  # fmt: skip
        if action == "relabel" and label not in self.images.class_names:
            raise ApiError(
                422, f"`label` must be one of the classes. Received: label={shown(label)}"
            )
        path = self.images.paths[i]
        digest = "" if action == "undo" else sha256_file(path)
        reason = next((item["group"] for item in self.items if item["index"] == i), "")
        append_decision(self.file, self.images.ids[i], digest, action, label, reason)
        return self.state()

    def thumbnail(self, i: int) -> bytes:
        from imgcls.data.decode import DecodeError, load_image

        if not 0 <= i < len(self.images):
            raise ApiError(404, f"no image {i}")
        try:
            pixels = load_image(self.images.paths[i])
        except DecodeError as e:
            raise ApiError(415, f"{self.images.ids[i]}: {e.detail}") from None
        from PIL import Image

        img = Image.fromarray(pixels)
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()


def create_review_app(data, run=None, corrections=None, config=None) -> FastAPI:
    """The ASGI app of ``imgcls review`` (see the module)."""
    from imgcls.serve.errors import add_error_handlers
    from imgcls.serve.guard import Guard
    from imgcls.serve.limits import BodyLimit, ServeConfig
    from imgcls.serve.metrics import Metrics

    config = (config or ServeConfig()).validate()
    review = Review(data, run, corrections)
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
