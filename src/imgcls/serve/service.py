"""What every route of ``imgcls serve`` shares: the loaded model, the limits, the batcher and
the metrics (:class:`Service`), the JSON error (:class:`ApiError`) and the request parsing both
APIs use."""

from __future__ import annotations

import base64
import binascii
import json
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Request

from imgcls.serve.limits import ServeConfig

DECODE_STATUS = {"not_an_image": 415, "too_large": 413, "unreadable": 400}  # DecodeError kinds
_SHOWN = reprlib.Repr()  # a received value in an error message: short, however big or deep
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 60, 60


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Service:
    """One served run: its predictor, name, limits, metrics and micro-batcher."""

    predictor: Any
    name: str
    config: ServeConfig
    metrics: Any
    batcher: Any
    decoder: Any  # a DecodePool

    @classmethod
    def load(cls, run: str | Path, config: ServeConfig) -> Service:
        """Load RUN's model now (and export it, for ONNX), not on the first request."""
        from imgcls.predict import Predictor
        from imgcls.serve.batcher import MicroBatcher
        from imgcls.serve.decoding import DecodePool
        from imgcls.serve.metrics import Metrics

        predictor = Predictor(run, engine=config.engine)
        predictor.runner()
        metrics = Metrics()
        batcher = MicroBatcher(
            predictor.predict_pixels, config.max_batch, config.max_wait_ms,
            metrics.batch_size.observe,
        )  # fmt: skip
        decoder = DecodePool(predictor.image_size, config.max_pixels, config.decode_workers)
        return cls(predictor, Path(run).resolve().name, config, metrics, batcher, decoder)

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes_

    def info(self) -> dict[str, Any]:
        """``GET /v1/info``: the model, its classes and the server's limits."""
        meta, config = self.predictor.meta, self.config
        return {
            "name": self.name,
            "model": meta.config.get("model"),
            "classes": self.classes,
            "image_size": list(self.predictor.image_size),
            "test_accuracy": meta.metrics.get("test_accuracy"),
            "tta": meta.tta,
            "temperature": meta.temperature,
            "engine": config.engine,
            "max_files": config.max_files,
            "max_body_bytes": config.max_body_bytes,
            "max_pixels": config.max_pixels,
            "max_request_pixels": config.max_request_pixels,
            "top_k": config.top_k,
        }

    async def classify(self, uploads: list[tuple[str, bytes]], top_k: int) -> list[dict]:
        """Decode each ``(filename, bytes)`` (a bad one gets an ``error``) and predict the rest
        in the shared batches; results as ``imgcls predict --format json`` prints them.
        413 before anything is decoded when the images add up to over ``max_request_pixels``."""
        from imgcls.predict import Prediction, fill_prediction

        data = [d for _, d in uploads]
        pixels = sum(await self.decoder.pixels(data))
        if pixels > self.config.max_request_pixels:
            raise ApiError(
                413,
                f"the images of this request add up to {pixels:,} pixels; the limit per request "
                f"is {self.config.max_request_pixels:,} (send fewer or smaller images)",
            )
        decoded = await self.decoder.decode(data, pixels)
        results = [Prediction(filename) for filename, _ in uploads]
        ok = [i for i, (image, _) in enumerate(decoded) if image is not None]
        for i, (_, error) in enumerate(decoded):
            results[i].error = error
        if ok:
            probs = await self.batcher.predict(np.stack([decoded[i][0] for i in ok]))
            for row, i in zip(probs, ok, strict=True):
                fill_prediction(results[i], row, self.classes, top_k)
        return [r.to_dict() for r in results]

    def check_count(self, n: int) -> None:
        """413 for more images in one request than ``max_files``."""
        if n > self.config.max_files:
            raise ApiError(413, f"{n} images in one request; the limit is {self.config.max_files}")


def decode_status(error: str) -> int:
    """The HTTP status of a decode error (``"kind: detail"``)."""
    return DECODE_STATUS.get(error.split(":")[0], 400)


def json_body(raw: bytes) -> dict:
    """A request's JSON object: 400 for a body that does not parse (nested too deep for the
    parser included), 422 for JSON that is not an object."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"body is not valid JSON: {e}") from None
    except RecursionError:  # e.g. 100,000 `[`: the parser gives up at Python's recursion limit
        raise ApiError(400, "body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"body must be a JSON object. Received: {shown(body)}")
    return body


def shown(value: Any) -> str:
    """``repr(value)`` cut short, for the ``Received: x=...`` of an error message."""
    return _SHOWN.repr(value)


def b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not valid base64") from None


async def _service(request: Request) -> Service:  # async: FastAPI runs a plain def on a thread
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(_service)]  # a route's argument: the app's Service
