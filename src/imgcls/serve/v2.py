"""The Open Inference Protocol v2 (KServe / Triton clients): server metadata and health, model
metadata, readiness and config (with or without ``/versions/1``, the one version), the model
repository index, and ``infer`` on encoded images as a BYTES input (JSON with base64 strings,
or the binary tensor extension; outputs in JSON or binary). The tensors: :mod:`.v2_tensors`."""

from __future__ import annotations

from importlib import metadata as package_metadata
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from imgcls.serve import docs
from imgcls.serve.service import ApiError, Service, ServiceDep, decode_status, json_body, shown
from imgcls.serve.v2_tensors import V2_INPUT, infer_response, read_infer

VERSION = "1"  # the one model version this server has
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository"]

router = APIRouter()


async def _path_version(request: Request) -> str | None:
    """The ``{version}`` of a versioned route; None on the others. A dependency, not a
    ``version`` argument with a default: on the routes without ``{version}`` that was a query
    parameter, so ``/v2/models/m?version=2`` answered 404 (found by schemathesis)."""
    return request.path_params.get("version")


PathVersion = Annotated[str | None, Depends(_path_version)]


@router.get("/v2", responses=docs.ok(docs.OBJECT, 401))
async def server_metadata():
    try:
        version = package_metadata.version("imgcls")
    except package_metadata.PackageNotFoundError:
        version = "unknown"
    return {"name": "imgcls", "version": version, "extensions": EXTENSIONS}


@router.get("/v2/health/live", responses=docs.ok(docs.OBJECT))
async def live():
    return {"live": True}


@router.get("/v2/health/ready", responses=docs.ok(docs.OBJECT))
async def ready():
    return {"ready": True}


def model_get(suffix: str = ""):
    """Register a GET route at ``/v2/models/{model}<suffix>`` and at its
    ``/versions/{version}`` twin."""

    def register(route):
        versioned = f"/v2/models/{{model}}/versions/{{version}}{suffix}"
        router.get(versioned, responses=docs.MODEL, openapi_extra=docs.VERSIONED)(route)
        return router.get(f"/v2/models/{{model}}{suffix}", responses=docs.MODEL)(route)

    return register


@model_get("")
async def metadata(model: str, s: ServiceDep, version: PathVersion):
    _check_model(model, s, version)
    return {
        "name": s.name,
        "versions": [VERSION],
        "platform": f"imgcls-{s.config.engine}",
        "inputs": [{"name": V2_INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(s.classes)]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {"classes": s.classes, "image_size": list(s.predictor.image_size)},
    }


@model_get("/ready")
async def model_ready(model: str, s: ServiceDep, version: PathVersion):
    _check_model(model, s, version)
    return {"name": s.name, "ready": True}


@model_get("/config")
async def model_config(model: str, s: ServiceDep, version: PathVersion):
    """The model configuration extension, in Triton's JSON form: shapes with the batch
    dimension (``max_batch_size`` 0), as the metadata has them."""
    _check_model(model, s, version)
    return {
        "name": s.name,
        "platform": f"imgcls-{s.config.engine}",
        "backend": "imgcls",
        "max_batch_size": 0,
        "version_policy": {"specific": {"versions": [int(VERSION)]}},
        "input": [{"name": V2_INPUT, "data_type": "TYPE_STRING", "dims": [-1]}],
        "output": [
            {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [-1, len(s.classes)],
             "label_filename": ""},
            {"name": "label", "data_type": "TYPE_STRING", "dims": [-1]},
        ],
        "parameters": {"classes": {"string_value": ",".join(s.classes)}},
    }  # fmt: skip


@router.post("/v2/repository/index", responses=docs.INDEX_OK, openapi_extra=docs.INDEX_BODY)
async def repository_index(request: Request, s: ServiceDep):
    """The model repository extension's index: the one model, loaded and ready. An optional
    body ``{"ready": bool}`` filters by readiness (this model is always ready)."""
    raw = await request.body()
    body = json_body(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise ApiError(422, f"the index request must be a JSON object. Received: {shown(body)}")
    only_ready = body.get("ready")
    if only_ready is not None and not isinstance(only_ready, bool):
        raise ApiError(422, f"`ready` must be true or false. Received: ready={shown(only_ready)}")
    return [{"name": s.name, "version": VERSION, "state": "READY"}]


@router.post("/v2/models/{model}/infer", responses=docs.INFER_OK, openapi_extra=docs.INFER)
@router.post(
    "/v2/models/{model}/versions/{version}/infer",
    responses=docs.INFER_OK,
    openapi_extra=docs.VERSIONED_INFER,
)
async def infer(model: str, request: Request, s: ServiceDep, version: PathVersion):
    _check_model(model, s, version)
    req = await read_infer(request, s)
    uploads = [(f"{i}", data) for i, data in enumerate(req.images)]
    results = await s.classify(uploads, len(s.classes))
    bad = [(i, r["error"]) for i, r in enumerate(results) if r.get("error")]
    if bad:
        raise ApiError(decode_status(bad[0][1]), f"input {V2_INPUT}[{bad[0][0]}]: {bad[0][1]}")
    probs = [[p["probability"] for p in _all_classes(r, s.classes)] for r in results]
    body = {"model_name": s.name, "model_version": VERSION}
    if req.id is not None:
        body["id"] = req.id
    return infer_response(body, probs, [r["label"] for r in results], req.outputs)


def _check_model(model: str, s: Service, version: str | None = None) -> None:
    if model != s.name:
        raise ApiError(404, f"unknown model {model!r}; this server has {s.name!r}")
    if version is not None and version != VERSION:
        raise ApiError(
            404, f"unknown version {version!r} of model {model!r}; it has version {VERSION!r}"
        )


def _all_classes(result: dict, classes: list[str]) -> list[dict]:
    """Every class's probability in class order (results carry the top-k only)."""
    by_label = {p["label"]: p["probability"] for p in result["top_k"]}
    return [{"label": c, "probability": by_label.get(c, 0.0)} for c in classes]
