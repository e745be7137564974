"""The FastAPI app of ``imgcls serve``: a web page, a JSON API, the Open Inference Protocol v2.

Routes:
    ``GET /``                          the page (static/index.html: drop images, see classes)
    ``GET /v1/info``                   model name, classes, image size, test accuracy
    ``POST /v1/predict``               multipart ``file`` parts or JSON ``{"images": [base64]}``;
                                       answers what ``imgcls predict --format json`` prints
    ``GET /v2``                        server metadata (name, version, extensions)
    ``GET /v2/health/live|ready``      liveness and readiness
    ``GET /v2/models/{name}[/versions/1][/ready|/config]``  model metadata, readiness, config
    ``POST /v2/models/{name}[/versions/1]/infer``  encoded images as a BYTES input (JSON with
                                       base64 strings, or the binary tensor extension); JSON or
                                       binary outputs
    ``POST /v2/repository/index``      the one model (Triton's repository extension)
    ``GET /metrics``                   Prometheus: requests, errors, latency, batch sizes
    ``GET /openapi.json``              every route's body, statuses and content types (:mod:`.docs`)

Nothing is unpickled; uploads are decoded by the one shared decoder after their header passed
the pixel cap. Every error is JSON ``{"error": "..."}`` with a fitting status (:mod:`.errors`).
The routes live in routers (:mod:`.v1`, :mod:`.v2`, the page and the metrics here) over one
:class:`Service`; with a token, ``/metrics`` needs it too unless ``open_metrics``.
"""

from __future__ import annotations

import gc
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from imgcls.serve import docs, v1, v2
from imgcls.serve.errors import add_error_handlers
from imgcls.serve.guard import Guard
from imgcls.serve.limits import BodyLimit, ServeConfig
from imgcls.serve.service import Service

STATIC = Path(__file__).parent / "static"


def create_app(run: str | Path, config: ServeConfig | None = None):
    """The ASGI app serving RUN (a run folder) with ``config``'s limits: the page, the v1 and
    v2 routers and the metrics behind one guard (token, timeout, counting, unexpected errors)
    and the streaming body cap.

    Example:
        >>> app = create_app("runs/pets")                       # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)       # doctest: +SKIP
    """
    config = (config or ServeConfig()).validate()
    service = Service.load(run, config)

    async def lifespan(app):
        await service.batcher.start()
        # The millions of objects of TensorFlow, Keras and the model live as long as the server:
        # out of the collector's sight, a full collection no longer stalls every request
        # in flight (p99 at 8 clients 181 -> 35 ms, bench/serve_load.py).
        gc.collect()
        gc.freeze()
        yield
        await service.batcher.stop()
        service.decoder.shutdown()

    app = FastAPI(title="imgcls", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.predictor = service.predictor
    for router in (page_router(), v1.router, v2.router, metrics_router()):
        app.include_router(router)
    add_error_handlers(app, config)
    # Plain ASGI layers, the last added outermost: the guard (token, timeout, metrics, the 500
    # for anything unexpected), then the body cap, refusing a body while it streams in.
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(Guard, service=service)
    return app


def page_router() -> APIRouter:
    """``GET /``: the page (static/index.html: drop images, see classes)."""
    router = APIRouter()
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @router.get("/", response_class=HTMLResponse, responses=docs.errors())
    async def index():
        return HTMLResponse(page)

    return router


def metrics_router() -> APIRouter:
    """``GET /metrics``: Prometheus text (requests, errors, latency, batch sizes)."""
    router = APIRouter()

    @router.get("/metrics", response_class=PlainTextResponse, responses=docs.errors(401))
    async def prometheus(request: Request):
        metrics = request.app.state.service.metrics
        return Response(metrics.render(), media_type=metrics.content_type)

    return router
