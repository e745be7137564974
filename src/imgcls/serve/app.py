"""The FastAPI app of ``imgcls serve``: a web page, a JSON API, the Open Inference Protocol v2.

Routes:
    ``GET /``                          the page (static/index.html: drop images, see classes)
    ``GET /v1/info``                   model name, classes, image size, test accuracy
    ``POST /v1/predict``               multipart ``file`` parts or JSON ``{"images": [base64]}``;
                                       answers what ``imgcls predict --format json`` prints
    ``GET /v2/health/live|ready``      liveness and readiness
    ``GET /v2/models/{name}[/ready]``  model metadata (KServe / Triton clients)
    ``POST /v2/models/{name}/infer``   encoded images as a BYTES input (JSON with base64
                                       strings, or the binary tensor extension)
    ``GET /metrics``                   Prometheus: requests, errors, latency, batch sizes

Nothing is unpickled; uploads are decoded by the one shared decoder after their header passed
the pixel cap. Every error is JSON ``{"error": "..."}`` with a fitting status. The routes live
in routers (:mod:`.v1`, :mod:`.v2`, the page and the metrics here) over one :class:`Service`.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from imgcls.serve import v1, v2
from imgcls.serve.limits import BodyLimit, BodyTooLarge, ServeConfig
from imgcls.serve.service import ApiError, Service

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/", "/v2/health/live", "/v2/health/ready", "/metrics")  # no token needed
TIMED = ("/v1/predict", "/v2/models/infer")  # endpoints answered within `timeout_s`


def create_app(run: str | Path, config: ServeConfig | None = None):
    """The ASGI app serving RUN (a run folder) with ``config``'s limits: the page, the v1 and
    v2 routers and the metrics behind one guard (token, timeout, counting), inside the streaming
    body cap.

    Example:
        >>> app = create_app("runs/pets")                       # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)       # doctest: +SKIP
    """
    config = (config or ServeConfig()).validate()
    service = Service.load(run, config)

    async def lifespan(app):
        await service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(title="imgcls", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.predictor = service.predictor
    for router in (page_router(), v1.router, v2.router, metrics_router()):
        app.include_router(router)
    _add_error_handlers(app, config)
    app.middleware("http")(_guard(service))
    # Separate ASGI layer so a body over the cap is refused while it streams in.
    return BodyLimit(app, config.max_body_bytes)


def page_router() -> APIRouter:
    """``GET /``: the page (static/index.html: drop images, see classes)."""
    router = APIRouter()
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @router.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    return router


def metrics_router() -> APIRouter:
    """``GET /metrics``: Prometheus text (requests, errors, latency, batch sizes)."""
    router = APIRouter()

    @router.get("/metrics")
    async def prometheus(request: Request):
        metrics = request.app.state.service.metrics
        return Response(metrics.render(), media_type=metrics.content_type)

    return router


def _add_error_handlers(app: FastAPI, config: ServeConfig) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, e: BodyTooLarge):
        message = f"request body is over the limit of {config.max_body_bytes:,} bytes"
        return JSONResponse({"error": message}, status_code=413)


def _guard(service: Service):
    """The middleware every request passes: the token, the time limit of the predicting
    endpoints, and the metrics."""
    config, metrics = service.config, service.metrics

    async def guard(request: Request, call_next):
        t0 = time.perf_counter()
        path = request.url.path
        endpoint = _endpoint(path)
        if config.token and path not in OPEN_PATHS and not _authorized(request, config.token):
            response = JSONResponse(
                {"error": "missing or wrong token: send `Authorization: Bearer <token>`"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        elif endpoint not in TIMED:
            response = await call_next(request)
        else:
            try:
                response = await asyncio.wait_for(call_next(request), config.timeout_s)
            except asyncio.TimeoutError:
                response = JSONResponse(
                    {"error": f"no answer within {config.timeout_s:g} s; try fewer images"},
                    status_code=503,
                )
        metrics.record(endpoint, response.status_code, time.perf_counter() - t0)
        return response

    return guard


def _endpoint(path: str) -> str:
    """A low-cardinality label for a request path (model names folded away)."""
    if path.startswith("/v2/models/"):
        return "/v2/models/infer" if path.endswith("/infer") else "/v2/models"
    return (
        path
        if path in ("/", "/v1/info", "/v1/predict", "/metrics") or path.startswith("/v2/health")
        else "other"
    )


def _authorized(request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)
