"""Slow clients: every request must arrive whole within ``read_timeout_s``.

uvicorn times out idle keep-alive connections but not a request that arrives slowly: a client
that sends a byte a second keeps its connection (and a file descriptor, and a place under the
connection limit) for as long as it likes, and 200 such clients starve everyone else. The ASGI
app cannot help, since it is called only once the headers are complete. So the guard sits in
the HTTP protocol: a deadline armed when a connection opens or a request's first byte arrives,
cleared when the whole request (headers and body) is in. A body that keeps arriving at
:data:`MIN_BODY_BYTES_PER_S` or more moves the deadline on, so a large upload over a slow link is
not cut off. Past the deadline the client gets a JSON 408 with ``Connection: close`` (unless its
answer has begun) and the connection is closed.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# Each 64 KB of body that arrives buys a second more: an upload at 0.5 Mbit/s or faster is
# bounded by --timeout-s alone, a client sending a byte a second is dropped after the timeout.
MIN_BODY_BYTES_PER_S = 65_536


class ReadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for reading each request; see the module."""

    read_timeout_s = 10.0  # set per server by :func:`protocol_with_read_timeout`
    _read_deadline: asyncio.TimerHandle | None = None
    _armed_at = 0.0  # loop time the current request's deadline counts from
    _received = 0  # bytes of it received since

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._read_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first bytes of the connection's next request
        super().data_received(data)
        state = self.conn.their_state
        if state is not h11.IDLE and state is not h11.SEND_BODY:
            self._disarm()  # the request is in (DONE), or the connection is ending
        elif self._read_deadline is not None:
            self._received += len(data)
            self._arm(self._armed_at)  # a body arriving steadily moves the deadline on

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, since: float | None = None) -> None:
        """Deadline: ``read_timeout_s`` after ``since`` (now: a new request, nothing received
        yet), plus a second per :data:`MIN_BODY_BYTES_PER_S` bytes received since then."""
        self._disarm()
        if since is None:
            since, self._received = self.loop.time(), 0
        self._armed_at = since
        when = since + self.read_timeout_s + self._received / MIN_BODY_BYTES_PER_S
        self._read_deadline = self.loop.call_at(when, self._too_slow)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _too_slow(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle if self.conn.their_state is h11.SEND_BODY else None
        if cycle is None or not cycle.response_started:
            self.transport.write(timeout_response(self.read_timeout_s))
        if cycle is not None:  # the app waiting for the body learns the client is gone
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def timeout_response(seconds: float) -> bytes:
    """The raw 408 (h11 cannot answer a request whose headers it has not all read)."""
    message = f"the request did not arrive within {seconds:g} s; the connection is closed"
    body = json.dumps({"error": message}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def protocol_with_read_timeout(seconds: float) -> type[ReadTimeoutProtocol]:
    """The protocol class for ``uvicorn.run(http=...)`` with ``seconds`` to read a request."""
    return type("ReadTimeoutProtocol", (ReadTimeoutProtocol,), {"read_timeout_s": seconds})
