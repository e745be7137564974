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
the pixel cap. Every error is JSON ``{"error": "..."}`` with a fitting status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from imgcls.serve.limits import BodyLimit, BodyTooLarge, ServeConfig

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/", "/v2/health/live", "/v2/health/ready", "/metrics")  # no token needed
V2_INPUT = "image"  # name of the BYTES input tensor on the v2 protocol
DECODE_STATUS = {"not_an_image": 415, "too_large": 413, "unreadable": 400}  # DecodeError kinds


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(run: str | Path, config: ServeConfig | None = None):
    """The ASGI app serving RUN (a run folder) with ``config``'s limits.

    Example:
        >>> app = create_app("runs/pets")                       # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)       # doctest: +SKIP
    """
    from imgcls.predict import Prediction, Predictor, fill_prediction
    from imgcls.serve.batcher import MicroBatcher
    from imgcls.serve.metrics import Metrics

    config = (config or ServeConfig()).validate()
    predictor = Predictor(run, engine=config.engine)
    predictor.runner()  # load (or export) the model now, not on the first request
    name = Path(run).resolve().name
    metrics = Metrics()
    batcher = MicroBatcher(
        predictor.predict_pixels, config.max_batch, config.max_wait_ms, metrics.batch_size.observe
    )
    info = _info(predictor, name, config)
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="imgcls", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, e: BodyTooLarge):
        message = f"request body is over the limit of {config.max_body_bytes:,} bytes"
        return JSONResponse({"error": message}, status_code=413)

    @app.middleware("http")
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
        elif endpoint not in ("/v1/predict", "/v2/models/infer"):
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

    async def classify(uploads: list[tuple[str, bytes]], top_k: int) -> list[dict]:
        results = [Prediction(filename) for filename, _ in uploads]
        decoded = await asyncio.gather(
            *(asyncio.to_thread(_decode, predictor, data, config) for _, data in uploads)
        )
        ok = [i for i, (pixels, _) in enumerate(decoded) if pixels is not None]
        for i, (_, error) in enumerate(decoded):
            results[i].error = error
        if ok:
            probs = await batcher.predict(np.stack([decoded[i][0] for i in ok]))
            for row, i in zip(probs, ok, strict=True):
                fill_prediction(results[i], row, predictor.classes_, top_k)
        return [r.to_dict() for r in results]

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/v1/info")
    async def v1_info():
        return info

    @app.post("/v1/predict")
    async def v1_predict(request: Request, top_k: int | None = None):
        k = config.top_k if top_k is None else top_k
        if k < 1:
            raise ApiError(422, f"`top_k` must be a positive integer. Received: top_k={k}")
        uploads = await _uploads(request, config)
        results = await classify(uploads, k)
        if all(r.get("error") for r in results):  # nothing could be read: say why, and how badly
            first = results[0]["error"]
            status = DECODE_STATUS.get(first.split(":")[0], 400)
            message = f"{results[0]['path']}: {first}"
            return JSONResponse({"error": message, "results": results}, status_code=status)
        return JSONResponse(results)

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    @app.get("/v2/models/{model}")
    async def v2_metadata(model: str):
        _check_model(model, name)
        return {
            "name": name,
            "versions": ["1"],
            "platform": f"imgcls-{config.engine}",
            "inputs": [{"name": V2_INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(info["classes"])]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {"classes": info["classes"], "image_size": info["image_size"]},
        }

    @app.get("/v2/models/{model}/ready")
    async def v2_ready(model: str):
        _check_model(model, name)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{model}/infer")
    async def v2_infer(model: str, request: Request):
        _check_model(model, name)
        request_id, images = await _v2_images(request, config)
        uploads = [(f"{i}", data) for i, data in enumerate(images)]
        results = await classify(uploads, len(predictor.classes_))
        bad = [(i, r["error"]) for i, r in enumerate(results) if r.get("error")]
        if bad:
            status = DECODE_STATUS.get(bad[0][1].split(":")[0], 400)
            raise ApiError(status, f"input {V2_INPUT}[{bad[0][0]}]: {bad[0][1]}")
        probs = [[p["probability"] for p in _all_classes(r, predictor.classes_)] for r in results]
        body = {
            "model_name": name,
            "model_version": "1",
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [len(results), len(predictor.classes_)],
                    "data": [p for row in probs for p in row],
                },
                {
                    "name": "label",
                    "datatype": "BYTES",
                    "shape": [len(results)],
                    "data": [r["label"] for r in results],
                },
            ],
        }
        if request_id is not None:
            body["id"] = request_id
        return body

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    # Separate ASGI layer so a body over the cap is refused while it streams in.
    app.state.predictor = predictor
    return BodyLimit(app, config.max_body_bytes)


def _info(predictor, name: str, config: ServeConfig) -> dict:
    meta = predictor.meta
    return {
        "name": name,
        "model": meta.config.get("model"),
        "classes": predictor.classes_,
        "image_size": list(predictor.image_size),
        "test_accuracy": meta.metrics.get("test_accuracy"),
        "tta": meta.tta,
        "temperature": meta.temperature,
        "engine": config.engine,
        "max_files": config.max_files,
        "max_body_bytes": config.max_body_bytes,
        "top_k": config.top_k,
    }


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


def _check_model(model: str, name: str) -> None:
    if model != name:
        raise ApiError(404, f"unknown model {model!r}; this server has {name!r}")


def _decode(predictor, data: bytes, config: ServeConfig) -> tuple[np.ndarray | None, str | None]:
    from imgcls.data.decode import DecodeError, load_image

    try:
        return load_image(data, predictor.image_size, config.max_pixels), None
    except DecodeError as e:
        return None, f"{e.kind}: {e.detail}"


async def _uploads(request, config: ServeConfig) -> list[tuple[str, bytes]]:
    """``(filename, bytes)`` of each image in a multipart or JSON ``/v1/predict`` request."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=config.max_files, max_fields=config.max_files)
        except BodyTooLarge:
            raise
        except Exception as e:  # noqa: BLE001 - Starlette reports malformed or too many parts
            raise ApiError(400, f"cannot read the multipart body: {e}") from None
        files = [f for f in form.getlist("file") if hasattr(f, "read")]
        uploads = [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)]
        await form.close()
    elif kind == "application/json":
        images = _json_body(await request.body()).get("images")
        if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
            raise ApiError(422, '`images` must be a list of base64 strings: {"images": ["..."]}')
        uploads = [(f"image{i}", _b64(s, f"images[{i}]")) for i, s in enumerate(images)]
    else:
        raise ApiError(
            415,
            f"send multipart/form-data (field `file`) or application/json; got {kind or 'none'}",
        )
    if not uploads:
        raise ApiError(422, "no images: send one or more multipart parts named `file`")
    if len(uploads) > config.max_files:
        raise ApiError(
            413, f"{len(uploads)} images in one request; the limit is {config.max_files}"
        )
    return uploads


async def _v2_images(request, config: ServeConfig) -> tuple[str | None, list[bytes]]:
    """The encoded images of a v2 infer request: JSON (BYTES as base64 strings) or the binary
    tensor extension (``Inference-Header-Content-Length``; each element length-prefixed)."""
    body = await request.body()
    header_length = request.headers.get("inference-header-content-length")
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ApiError(400, "Inference-Header-Content-Length does not fit the body")
        header, binary = _json_body(body[: int(header_length)]), body[int(header_length) :]
    else:
        header, binary = _json_body(body), b""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(422, f"`inputs` must hold one tensor, {V2_INPUT!r} (BYTES)")
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise ApiError(
            422, f"input {tensor.get('name')!r} must have datatype BYTES (encoded images)"
        )
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        images = _length_prefixed(binary[:size])
    else:
        data = tensor.get("data")
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            raise ApiError(422, f"input {V2_INPUT!r}: `data` must be a list of base64 strings")
        images = [_b64(s, f"{V2_INPUT}[{i}]") for i, s in enumerate(data)]
    if not images:
        raise ApiError(422, f"input {V2_INPUT!r} holds no images")
    if len(images) > config.max_files:
        raise ApiError(413, f"{len(images)} images in one request; the limit is {config.max_files}")
    request_id = header.get("id")
    return (str(request_id) if request_id is not None else None), images


def _length_prefixed(buffer: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(buffer):
        if i + 4 > len(buffer):
            raise ApiError(400, "binary BYTES tensor is truncated (length prefix)")
        n = int.from_bytes(buffer[i : i + 4], "little")
        if i + 4 + n > len(buffer):
            raise ApiError(400, "binary BYTES tensor is truncated (element)")
        out.append(buffer[i + 4 : i + 4 + n])
        i += 4 + n
    return out


def _json_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(422, "body must be a JSON object")
    return body


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not valid base64") from None


def _all_classes(result: dict, classes: list[str]) -> list[dict]:
    """Every class's probability in class order (results carry the top-k only)."""
    by_label = {p["label"]: p["probability"] for p in result["top_k"]}
    return [{"label": c, "probability": by_label.get(c, 0.0)} for c in classes]
