"""Every limit the server enforces, with a safe default, and the ASGI guard for body size.

Starlette reads a request body whole without a cap of its own; :class:`BodyLimit` counts the
bytes as they stream in and answers 413 as soon as the cap is crossed (or at once when the
``Content-Length`` header already says so), before anything is parsed or decoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from imgcls.engine import ENGINES
from imgcls.errors import check

MB = 1 << 20


def _setting(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class ServeConfig:
    """Settings of ``imgcls serve``; the command's flags are generated from these fields, and
    each limit has a test that crosses it and then shows the server still answers."""

    host: str = _setting("127.0.0.1", "address to bind; 0.0.0.0 opens it to the network")
    port: int = _setting(8000, "TCP port")
    token: str | None = _setting(
        None, "require `Authorization: Bearer TOKEN` on the API (default: $IMGCLS_TOKEN if set)"
    )
    open_metrics: bool = _setting(
        False, "serve /metrics without the token (with --token it needs the token otherwise)"
    )
    engine: str = _setting(
        "keras", "keras, keras-bf16 (bfloat16: faster on AMX CPUs) or onnx", choices=ENGINES
    )
    max_batch: int = _setting(32, "most images predicted in one forward pass")
    # 0: requests that queued while the model ran are batched, none waits for company. On 2
    # CPU cores a 5 ms wait only added latency (bench/serve_load.py); it pays on a GPU.
    max_wait_ms: float = _setting(
        0.0, "ms a request waits for others to batch with (0: batch only what queued meanwhile)"
    )
    max_body_bytes: int = _setting(32 * MB, "largest request body, counted as it streams in")
    max_files: int = _setting(64, "most images in one request")
    max_pixels: int = _setting(  # any phone photo fits; a 100 MP PNG is refused unread
        40_000_000, "width x height above which an upload is refused from its header"
    )
    max_request_pixels: int = _setting(  # five images at --max-pixels; more than a 32 MB body
        200_000_000,  # of ordinary photos holds. 0.5 s of a core per 40 MP PNG (decoding.py)
        "decoded pixels (width x height) of all images of one request together; past it the "
        "request gets 413 before anything is decoded",
    )
    decode_workers: int = _setting(
        0, "threads decoding uploads, requests taking turns (0: one per CPU core)"
    )
    timeout_s: float = _setting(30.0, "seconds before an unanswered request gets 503")
    read_timeout_s: float = _setting(
        10.0, "seconds a client has to send a whole request (headers and body); a slower one "
        "gets 408 and is disconnected",
    )  # fmt: skip
    max_connections: int = _setting(
        1000, "open connections at most; past it a new request gets 503 (uvicorn's "
        "limit_concurrency)",
    )  # fmt: skip
    top_k: int = _setting(5, "classes returned per image unless the request says ?top_k=")

    def validate(self) -> ServeConfig:
        positive = ("port", "max_batch", "max_body_bytes", "max_files", "max_pixels", "top_k",
                    "max_request_pixels", "max_connections")  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            check(
                isinstance(value, int) and value > 0,
                f"`{name}` must be a positive integer. Received: {name}={value!r}",
            )
        check(self.port < 65536, f"`port` must be below 65536. Received: port={self.port}")
        check(
            self.max_wait_ms >= 0,
            f"`max_wait_ms` must be >= 0. Received: max_wait_ms={self.max_wait_ms}",
        )
        check(
            isinstance(self.decode_workers, int) and self.decode_workers >= 0,
            f"`decode_workers` must be an integer >= 0. Received: {self.decode_workers!r}",
        )
        for name in ("timeout_s", "read_timeout_s"):
            value = getattr(self, name)
            check(value > 0, f"`{name}` must be positive. Received: {name}={value}")
        return self


class BodyTooLarge(Exception):
    """Raised inside ``receive`` when a body crosses the cap."""


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, counted as it arrives."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await too_large(send, self.max_bytes)
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await too_large(send, self.max_bytes)


def too_large_message(max_bytes: int) -> str:
    return f"request body is over the limit of {max_bytes:,} bytes"


async def too_large(send, max_bytes: int) -> None:
    body = json.dumps({"error": too_large_message(max_bytes)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
