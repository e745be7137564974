"""The tensors of an Open Inference Protocol v2 ``infer``: the request read and checked against
the model metadata (one BYTES input of encoded images; the outputs asked for, JSON or binary),
and the response written as JSON or as the binary tensor extension (a JSON header, then each
binary output's raw bytes, ``Inference-Header-Content-Length`` giving the header's length).

Errors follow :mod:`.errors`: 400 for a body that does not parse (the binary framing included),
422 for a parsed body with a wrong field, in the ``Received: name=value`` wording.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from imgcls.serve.service import ApiError, Service, b64, json_body, shown

V2_INPUT = "image"  # name of the BYTES input tensor on the v2 protocol
OUTPUTS = ("probabilities", "label")  # the model's outputs, in the metadata's order
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class InferRequest:
    """A checked v2 infer request: its id, the encoded images, and each output to answer
    with whether it goes binary."""

    id: str | None
    images: list[bytes]
    outputs: list[tuple[str, bool]]


async def read_infer(request: Request, s: Service) -> InferRequest:
    """The images and wanted outputs of a v2 infer request: JSON (BYTES as base64 strings) or
    the binary tensor extension (``Inference-Header-Content-Length``; each element
    length-prefixed)."""
    body = await request.body()
    header_length = request.headers.get("inference-header-content-length")
    if header_length is not None:
        n = int(header_length) if header_length.isascii() and header_length.isdigit() else -1
        if not 0 <= n <= len(body):
            raise ApiError(400, "Inference-Header-Content-Length does not fit the body")
        header, binary = json_body(body[:n]), body[n:]
    else:
        header, binary = json_body(body), b""
    outputs = _wanted_outputs(header)
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
    if shape is not None and shape != [len(images)]:
        raise ApiError(
            422,
            f"`inputs[0].shape` must be [{len(images)}], the number of images in the data "
            f"(the metadata's shape is [-1]). Received: inputs[0].shape={shown(shape)}",
        )
    s.check_count(len(images))
    request_id = header.get("id")
    return InferRequest(str(request_id) if request_id is not None else None, images, outputs)


def _wanted_outputs(header: dict) -> list[tuple[str, bool]]:
    """``(name, binary)`` for each output to answer: those in ``outputs`` (all when absent),
    binary where the output's ``parameters.binary_data`` says so, else where the request's
    ``parameters.binary_data_output`` does."""
    _field(header, "id", (str, int), "a string")
    params = _field(header, "parameters", dict, "an object") or {}
    default = _field(params, "binary_data_output", bool, "true or false", "parameters.")
    wanted = _field(header, "outputs", list, "a list of objects")
    if wanted is None:
        return [(name, bool(default)) for name in OUTPUTS]
    out = []
    for i, o in enumerate(wanted):
        _checked(o, dict, "an object", f"outputs[{i}]")
        name = _field(o, "name", str, "a string", f"outputs[{i}].")
        if name not in OUTPUTS:
            raise ApiError(
                422,
                f"`outputs[{i}].name` must be one of {list(OUTPUTS)}. "
                f"Received: outputs[{i}].name={shown(name)}",
            )
        o_params = _field(o, "parameters", dict, "an object", f"outputs[{i}].") or {}
        binary = _field(o_params, "binary_data", bool, "true or false", f"outputs[{i}].parameters.")
        out.append((name, bool(default) if binary is None else binary))
    return out


def _checked_tensor(header: dict) -> dict:
    """The one input tensor of a v2 request, once its name, datatype and fields match the
    metadata (422 naming the first that does not)."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(
            422,
            f"`inputs` must be a list of one tensor, {V2_INPUT!r} (BYTES). "
            f"Received: inputs={shown(inputs)}",
        )
    tensor = inputs[0]
    name = _field(tensor, "name", str, "a string", "inputs[0].")
    if name != V2_INPUT:
        raise ApiError(
            422,
            f"`inputs[0].name` must be {V2_INPUT!r}, the model's one input. "
            f"Received: inputs[0].name={shown(name)}",
        )
    if tensor.get("datatype") != "BYTES":
        raise ApiError(
            422,
            f"`inputs[0].datatype` of {V2_INPUT!r} must be 'BYTES' (encoded images). "
            f"Received: inputs[0].datatype={shown(tensor.get('datatype'))}",
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
    bool_ok = kinds is bool
    if value is not None and (
        not isinstance(value, kinds) or (isinstance(value, bool) and not bool_ok)
    ):
        raise ApiError(422, f"`{name}` must be {what}. Received: {name}={shown(value)}")
    return value


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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


def infer_response(body: dict, probs: list[list[float]], labels: list[str], outputs) -> Response:
    """``body`` (name, version, id) with each wanted output: in JSON, or, once one of them is
    binary, the JSON header followed by the binary outputs' bytes in the header's order."""
    tensors = {
        "probabilities": ("FP32", [len(probs), len(probs[0]) if probs else 0],
                          [p for row in probs for p in row]),
        "label": ("BYTES", [len(labels)], labels),
    }  # fmt: skip
    blobs = []
    body["outputs"] = []
    for name, binary in outputs:
        datatype, shape, data = tensors[name]
        out = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = _binary(datatype, data)
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = data
        body["outputs"].append(out)
    if not blobs:
        return JSONResponse(body)
    head = json.dumps(body, separators=(",", ":")).encode()
    return Response(
        head + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(head))},
    )


def _binary(datatype: str, data: list) -> bytes:
    """A tensor's raw bytes as Triton sends them: FP32 little-endian; BYTES each element as a
    4-byte little-endian length and its bytes."""
    if datatype == "FP32":
        return np.asarray(data, dtype="<f4").tobytes()
    items = [x.encode() for x in data]
    return b"".join(len(x).to_bytes(4, "little") + x for x in items)
