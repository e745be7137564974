"""The middleware every request of ``imgcls serve`` passes: the token, the time limit of the
predicting endpoints, the metrics, and the JSON 500 for anything unexpected.

A plain ASGI class, not ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` reads the
body in an anyio task group, which wraps an exception raised while the body streams in (the
body cap's :class:`~imgcls.serve.limits.BodyTooLarge`) in an ``ExceptionGroup`` that no handler
matches, so a chunked body over the cap got a 500 instead of its 413.
"""

from __future__ import annotations

import asyncio
import hmac
import time

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect

from imgcls.serve.errors import error, internal_error

OPEN_PATHS = ("/", "/v2/health/live", "/v2/health/ready")  # no token needed
TIMED = ("/v1/predict", "/v2/models/infer")  # endpoints answered within `timeout_s`
ENDPOINTS = ("/", "/v1/info", "/v1/predict", "/metrics", "/v2", "/v2/health/live",
             "/v2/health/ready", "/v2/repository/index")  # fmt: skip
CLIENT_GONE = 499  # nginx's status for a client that left before its answer (never sent)
UNAUTHORIZED = "missing or wrong token: send `Authorization: Bearer <token>`"


class Guard:
    """ASGI middleware: 401 without the token (``/metrics`` too unless ``open_metrics``), 503
    past ``timeout_s`` on the predicting endpoints, every answer counted in the metrics, and
    :func:`~imgcls.serve.errors.internal_error` for an exception nothing else handled."""

    def __init__(self, app, service):
        self.app, self.config, self.metrics = app, service.config, service.metrics
        self.open_paths = OPEN_PATHS + (("/metrics",) if self.config.open_metrics else ())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        endpoint = endpoint_of(scope["path"])
        sent = {"status": None}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            await send(message)

        status = 500
        try:
            await self._answer(scope, receive, counting_send, endpoint, sent)
            status = sent["status"] or 500
        except ClientDisconnect:  # gone before its body was in (or dropped as too slow)
            status = sent["status"] or CLIENT_GONE
        except Exception as e:  # noqa: BLE001 - whatever no handler knew: JSON 500, logged
            response = internal_error(scope, e)
            if sent["status"] is None:
                await response(scope, receive, send)
            # else the answer is half sent: returning unfinished makes uvicorn close the socket
        finally:
            self.metrics.record(endpoint, status, time.perf_counter() - t0)

    async def _answer(self, scope, receive, send, endpoint: str, sent: dict) -> None:
        config = self.config
        needs_token = config.token and scope["path"] not in self.open_paths
        if needs_token and not authorized(scope, config.token):
            response = error(401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        if endpoint not in TIMED:
            return await self.app(scope, receive, send)
        try:
            await asyncio.wait_for(self.app(scope, receive, send), config.timeout_s)
        except asyncio.TimeoutError:
            if sent["status"] is not None:
                raise  # too late for a 503: the answer has begun
            message = f"no answer within {config.timeout_s:g} s; try fewer images"
            await error(503, message)(scope, receive, send)


def endpoint_of(path: str) -> str:
    """A low-cardinality label for a request path (model names folded away)."""
    if path.startswith("/v2/models/"):
        return "/v2/models/infer" if path.endswith("/infer") else "/v2/models"
    return path if path in ENDPOINTS else "other"  # not the path: any client could invent one


def authorized(scope, token: str) -> bool:
    scheme, _, given = Headers(scope=scope).get("authorization", "").partition(" ")
    # As bytes: compare_digest refuses str with non-ASCII characters (Headers decode latin-1).
    given_bytes, token_bytes = given.strip().encode("latin-1"), token.encode("utf-8")
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token_bytes)
