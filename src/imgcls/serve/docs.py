"""What ``/openapi.json`` says of each route: the request bodies the routes read themselves
(multipart, JSON, the v2 binary extension), and every status each can answer, with the shared
JSON error ``{"error": "..."}`` (``request_id`` too on a 500), so a schema-driven client or
fuzzer (schemathesis) sees the whole API. Passed to the route decorators as ``responses=`` and
``openapi_extra=``; nothing here runs per request."""

from __future__ import annotations

from typing import Any

ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
INTERNAL = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "request_id": {"type": "string"}},
    "required": ["error", "request_id"],
}
WHY = {
    400: "the body does not parse (JSON, base64, multipart or binary framing)",
    401: "missing or wrong token (only when the server has one)",
    404: "no such model or version",
    413: "the body, an image, the number of images or their pixels together is over a limit",
    415: "a content type or an image format the server does not read",
    422: "the request parsed, but a field is wrong",
    503: "no answer within the time limit",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for ``statuses`` (JSON errors) and the 500 every route can give."""
    out: dict[int | str, dict[str, Any]] = {
        s: {"description": WHY[s], "content": {"application/json": {"schema": ERROR}}}
        for s in statuses
    }
    out[500] = {
        "description": "an unexpected error, logged under `request_id`",
        "content": {"application/json": {"schema": INTERNAL}},
    }
    return out


def ok(schema: dict, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=``: a JSON 200 of ``schema``, then :func:`errors`."""
    return {200: {"description": "OK", "content": {"application/json": {"schema": schema}}},
            **errors(*statuses)}  # fmt: skip


def body(content: dict[str, dict], required: bool = True) -> dict:
    """``openapi_extra=`` declaring a request body read by the route itself."""
    return {"requestBody": {"required": required, "content": content}}


STRINGS = {"type": "array", "items": {"type": "string"}}
OBJECT = {"type": "object"}
PREDICTION = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "label": {"type": ["string", "null"]},
        "probability": {"type": ["number", "null"]},
        "top_k": {"type": "array", "items": {
            "type": "object",
            "properties": {"label": {"type": "string"}, "probability": {"type": "number"}},
            "required": ["label", "probability"],
        }},
        "error": {"type": "string"},
    },
    "required": ["path", "top_k"],
}  # fmt: skip
PREDICT_BODY = body({
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            "required": ["file"],
        },
    },
    "application/json": {
        "schema": {
            "type": "object",
            "properties": {"images": {**STRINGS, "description": "base64-encoded images"}},
            "required": ["images"],
        },
    },
})  # fmt: skip
INFO = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "classes": STRINGS,
                   "image_size": {"type": "array", "items": {"type": "integer"}}},
    "required": ["name", "classes", "image_size"],
}  # fmt: skip

TENSOR = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "parameters": {"type": "object",
                       "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
        "data": STRINGS,
    },
    "required": ["name", "datatype", "shape"],
}  # fmt: skip
OUTPUT_REQUEST = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "parameters": {
        "type": "object", "properties": {"binary_data": {"type": "boolean"}}}},
    "required": ["name"],
}  # fmt: skip
INFER_REQUEST = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object",
                       "properties": {"binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "items": TENSOR},
        "outputs": {"type": "array", "items": OUTPUT_REQUEST},
    },
    "required": ["inputs"],
}  # fmt: skip
INFER_BODY = body({
    "application/json": {"schema": INFER_REQUEST},
    # The binary tensor extension: `Inference-Header-Content-Length` bytes of the JSON above,
    # then each binary input's bytes (BYTES elements: 4-byte little-endian length, then data).
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
})  # fmt: skip
INFER_OK = {
    200: {
        "description": "the outputs: JSON, or with a binary output the JSON header (its length"
        " in `Inference-Header-Content-Length`) followed by the binary outputs",
        "content": {
            "application/json": {"schema": {
                "type": "object",
                "properties": {"model_name": {"type": "string"}, "id": {"type": "string"},
                               "outputs": {"type": "array", "items": OBJECT}},
                "required": ["model_name", "outputs"],
            }},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    **errors(400, 401, 404, 413, 415, 422, 503),
}  # fmt: skip
INDEX_BODY = body(
    {"application/json": {"schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}},
    required=False,
)  # fmt: skip
INDEX_OK = ok(
    {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "version": {"type": "string"}, "state": {"type": "string"}}}},
    400, 401, 413, 422,
)  # fmt: skip
MODEL = ok(OBJECT, 401, 404, 422)  # a model route (422: FastAPI's default, never given here)
# Declared here: the routes read `{version}` through a dependency (see v2._path_version).
VERSION_PARAM = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
VERSIONED = {"parameters": [VERSION_PARAM]}
HEADER_LENGTH_PARAM = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "binary extension: the length of the JSON header that starts the body",
    "schema": {"type": "integer", "minimum": 0},
}
INFER = {**INFER_BODY, "parameters": [HEADER_LENGTH_PARAM]}
VERSIONED_INFER = {**INFER_BODY, "parameters": [VERSION_PARAM, HEADER_LENGTH_PARAM]}
