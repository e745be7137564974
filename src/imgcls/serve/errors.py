"""Every error ``imgcls serve`` answers, in one place: JSON ``{"error": "..."}`` with its status,
whatever raised it.

- :class:`~imgcls.serve.service.ApiError` (the routes' own checks): its status and message;
- FastAPI's ``HTTPException``: an unknown route 404, a wrong method 405 (with ``Allow``);
- ``RequestValidationError``: a query parameter of the wrong type (``?top_k=abc``), 422 like
  every well-formed request whose fields are wrong (400 is for a body that does not parse);
- :class:`~imgcls.serve.limits.BodyTooLarge`: the body crossed the cap as it streamed in, 413;
- anything else: 500 ``{"error": "internal error", "request_id": "..."}`` (:func:`internal_error`,
  answered by :class:`~imgcls.serve.guard.Guard`, which also counts it), its traceback logged
  under that id on the ``imgcls.serve`` logger, and the connection closed.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from imgcls.serve.limits import BodyTooLarge, ServeConfig, too_large_message
from imgcls.serve.service import ApiError, shown

log = logging.getLogger("imgcls.serve")
CLOSE = {"Connection": "close"}  # the request may be half read: answer, then hang up
_WHERE = ("query", "path", "header", "cookie", "body")  # leading parts of a validation `loc`


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error every refusal of the server is."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def internal_error(scope, exc: BaseException) -> JSONResponse:
    """500 for an unexpected ``exc``: the client gets an id, the log the traceback under it."""
    request_id = uuid.uuid4().hex[:16]
    log.error(
        "internal error %s answering %s %s", request_id, scope.get("method"), scope.get("path"),
        exc_info=exc,
    )  # fmt: skip
    body = {"error": "internal error", "request_id": request_id}
    return JSONResponse(body, status_code=500, headers=CLOSE)


def validation_message(e: RequestValidationError) -> str:
    """FastAPI's validation errors in the wording of the rest of the API, e.g. "`top_k` must be
    a valid integer, unable to parse string as an integer. Received: top_k='abc'"."""
    parts = []
    for err in e.errors():
        loc = [str(x) for x in err.get("loc", ())]
        name = ".".join(loc[1:] if loc and loc[0] in _WHERE else loc) or "request"
        message = str(err.get("msg", "is not valid")).replace("Input should be", "must be", 1)
        parts.append(f"`{name}` {message}. Received: {name}={shown(err.get('input'))}")
    return "; ".join(parts) or "the request is not valid"


def add_error_handlers(app: FastAPI, config: ServeConfig) -> None:
    """Turn each exception a route can raise into its JSON error."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return error(e.status, e.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        message = f"{e.detail}: {request.method} {request.url.path}"
        return error(e.status_code, message, dict(e.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return error(422, validation_message(e))

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, e: BodyTooLarge):
        return error(413, too_large_message(config.max_body_bytes), CLOSE)

    # Reached only by a fault in the guard itself (it answers every other unexpected error);
    # Starlette then re-raises, so uvicorn logs it too.
    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        return internal_error(request.scope, e)
