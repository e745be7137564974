"""The Open Inference Protocol v2 (KServe / Triton clients): health, model metadata and
readiness, and ``infer`` on encoded images as a BYTES input (JSON with base64 strings, or the
binary tensor extension)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from imgcls.serve.service import (
    ApiError,
    Service,
    ServiceDep,
    b64,
    decode_status,
    json_body,
    shown,
)

V2_INPUT = "image"  # name of the BYTES input tensor on the v2 protocol

router = APIRouter()


@router.get("/v2/health/live")
async def live():
    return {"live": True}


@router.get("/v2/health/ready")
async def ready():
    return {"ready": True}


@router.get("/v2/models/{model}")
async def metadata(model: str, s: ServiceDep):
    _check_model(model, s)
    return {
        "name": s.name,
        "versions": ["1"],
        "platform": f"imgcls-{s.config.engine}",
        "inputs": [{"name": V2_INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(s.classes)]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {"classes": s.classes, "image_size": list(s.predictor.image_size)},
    }


@router.get("/v2/models/{model}/ready")
async def model_ready(model: str, s: ServiceDep):
    _check_model(model, s)
    return {"name": s.name, "ready": True}


@router.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request, s: ServiceDep):
    _check_model(model, s)
    request_id, images = await _v2_images(request, s)
    uploads = [(f"{i}", data) for i, data in enumerate(images)]
    results = await s.classify(uploads, len(s.classes))
    bad = [(i, r["error"]) for i, r in enumerate(results) if r.get("error")]
    if bad:
        raise ApiError(decode_status(bad[0][1]), f"input {V2_INPUT}[{bad[0][0]}]: {bad[0][1]}")
    probs = [[p["probability"] for p in _all_classes(r, s.classes)] for r in results]
    body = {
        "model_name": s.name,
        "model_version": "1",
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [len(results), len(s.classes)],
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


def _check_model(model: str, s: Service) -> None:
    if model != s.name:
        raise ApiError(404, f"unknown model {model!r}; this server has {s.name!r}")


async def _v2_images(request: Request, s: Service) -> tuple[str | None, list[bytes]]:
    """The encoded images of a v2 infer request: JSON (BYTES as base64 strings) or the binary
    tensor extension (``Inference-Header-Content-Length``; each element length-prefixed)."""
    body = await request.body()
    header_length = request.headers.get("inference-header-content-length")
    if header_length is not None:
        n = int(header_length) if header_length.isascii() and header_length.isdigit() else -1
        if not 0 <= n <= len(body):
            raise ApiError(400, "Inference-Header-Content-Length does not fit the body")
        header, binary = json_body(body[:n]), body[n:]
    else:
        header, binary = json_body(body), b""
    tensor = _checked_tensor(header)
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size > len(binary):
            raise ApiError(
                400, f"binary_data_size {size:,} is past the body's end ({len(binary):,})"
            )
        images = _length_prefixed(binary[:size])
    else:
        data = tensor.get("data")
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise ApiError(
                422,
                f"`inputs[0].data` of {V2_INPUT!r} must be a list of base64 strings. "
                f"Received: inputs[0].data={shown(data)}",
            )
        images = [b64(x, f"{V2_INPUT}[{i}]") for i, x in enumerate(data)]
    if not images:
        raise ApiError(422, f"input {V2_INPUT!r} holds no images")
    shape = tensor.get("shape")
    if shape is not None and _elements(shape, len(images)) != len(images):
        raise ApiError(
            422,
            f"`inputs[0].shape` must hold as many elements as the data has images "
            f"({len(images)}). Received: inputs[0].shape={shown(shape)}",
        )
    s.check_count(len(images))
    request_id = header.get("id")
    return (str(request_id) if request_id is not None else None), images


def _checked_tensor(header: dict) -> dict:
    """The one input tensor of a v2 request, once every field the protocol defines has the
    right type (422 naming the first that has not)."""
    _field(header, "id", (str, int), "a string")
    _field(header, "parameters", dict, "an object")
    for i, out in enumerate(_field(header, "outputs", list, "a list of objects") or []):
        _checked(out, dict, "an object", f"outputs[{i}]")
        _field(out, "name", str, "a string", f"outputs[{i}].")
        _field(out, "parameters", dict, "an object", f"outputs[{i}].")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(
            422,
            f"`inputs` must be a list of one tensor, {V2_INPUT!r} (BYTES). "
            f"Received: inputs={shown(inputs)}",
        )
    tensor = inputs[0]
    _field(tensor, "name", str, "a string", "inputs[0].")
    if tensor.get("datatype") != "BYTES":
        raise ApiError(
            422, f"input {tensor.get('name')!r} must have datatype BYTES (encoded images)"
        )
    shape = tensor.get("shape")
    if shape is not None and not (isinstance(shape, list) and all(map(_count, shape))):
        raise ApiError(
            422,
            "`inputs[0].shape` must be a list of non-negative integers. "
            f"Received: inputs[0].shape={shown(shape)}",
        )
    size = (_field(tensor, "parameters", dict, "an object", "inputs[0].") or {}).get(
        "binary_data_size"
    )
    if size is not None and not _count(size):
        name = "inputs[0].parameters.binary_data_size"
        raise ApiError(
            422, f"`{name}` must be a non-negative integer. Received: {name}={shown(size)}"
        )
    return tensor


def _field(obj: dict, key: str, kinds, what: str, where: str = ""):
    """``obj[key]``, or None if absent; 422 if it is there with a type not in ``kinds``."""
    return _checked(obj.get(key), kinds, what, where + key)


def _checked(value, kinds, what: str, name: str):
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
        raise ApiError(422, f"`{name}` must be {what}. Received: {name}={shown(value)}")
    return value


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _elements(shape: list[int], most: int) -> int:
    """The element count of ``shape``, or ``most + 1`` once it has more (so that a shape of
    huge numbers is never multiplied out)."""
    if 0 in shape:
        return 0
    n = 1
    for d in shape:
        n *= d
        if n > most:
            return most + 1
    return n


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


def _all_classes(result: dict, classes: list[str]) -> list[dict]:
    """Every class's probability in class order (results carry the top-k only)."""
    by_label = {p["label"]: p["probability"] for p in result["top_k"]}
    return [{"label": c, "probability": by_label.get(c, 0.0)} for c in classes]
