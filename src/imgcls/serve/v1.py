"""The JSON API: ``GET /v1/info`` and ``POST /v1/predict`` (multipart ``file`` parts or JSON
``{"images": [base64]}``), answering what ``imgcls predict --format json`` prints."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from imgcls.serve import docs
from imgcls.serve.limits import BodyTooLarge
from imgcls.serve.service import (
    ApiError,
    Service,
    ServiceDep,
    b64,
    decode_status,
    json_body,
    shown,
)

router = APIRouter()


@router.get("/v1/info", responses=docs.ok(docs.INFO, 401))
async def info(s: ServiceDep):
    return s.info()


@router.post(
    "/v1/predict",
    responses=docs.ok({"type": "array", "items": docs.PREDICTION}, 400, 401, 413, 415, 422, 503),
    openapi_extra=docs.PREDICT_BODY,
)
async def predict(request: Request, s: ServiceDep, top_k: int | None = None):
    k = s.config.top_k if top_k is None else top_k
    if k < 1:
        raise ApiError(422, f"`top_k` must be a positive integer. Received: top_k={k}")
    uploads = await uploads_of(request, s)
    results = await s.classify(uploads, k)
    if all(r.get("error") for r in results):  # nothing could be read: say why, and how badly
        first = results[0]["error"]
        message = f"{results[0]['path']}: {first}"
        return JSONResponse(
            {"error": message, "results": results}, status_code=decode_status(first)
        )
    return JSONResponse(results)


async def uploads_of(request: Request, s: Service) -> list[tuple[str, bytes]]:
    """``(filename, bytes)`` of each image in a multipart or JSON ``/v1/predict`` request."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        uploads = await _multipart(request, s)
    elif kind == "application/json":
        images = json_body(await request.body()).get("images")
        if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
            raise ApiError(
                422,
                '`images` must be a list of base64 strings: {"images": ["..."]}. '
                f"Received: images={shown(images)}",
            )
        uploads = [(f"image{i}", b64(x, f"images[{i}]")) for i, x in enumerate(images)]
    else:
        raise ApiError(
            415,
            f"send multipart/form-data (field `file`) or application/json; got {kind or 'none'}",
        )
    if not uploads:
        raise ApiError(422, "no images: send one or more multipart parts named `file`")
    s.check_count(len(uploads))
    return uploads


async def _multipart(request: Request, s: Service) -> list[tuple[str, bytes]]:
    limit = s.config.max_files
    try:
        form = await request.form(max_files=limit, max_fields=limit)
    except BodyTooLarge:
        raise
    except Exception as e:  # noqa: BLE001 - Starlette reports malformed or too many parts
        if "Too many files" in str(e):  # Starlette stops reading at max_files + 1 parts
            message = f"over {limit} images in one request; the limit is {limit}"
            raise ApiError(413, message) from None
        raise ApiError(400, f"cannot read the multipart body: {e}") from None
    files = [f for f in form.getlist("file") if hasattr(f, "read")]
    uploads = [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)]
    await form.close()
    return uploads
