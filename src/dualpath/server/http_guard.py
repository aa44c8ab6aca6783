"""Connection-level limits that uvicorn 0.54 does not enforce itself, in our HTTP protocol.

uvicorn's httptools protocol has a keep-alive timeout (armed only after a response) and
`limit_concurrency` (which answers 503 but keeps every connection open); it has no header or
body read timeout, no cap on open connections and no header size limit, so a client that
opens connections and sends nothing, or sends a request head or body one byte at a time, holds
a socket (and, for a started request, an ASGI task) forever. `GuardedHttpToolsProtocol` adds,
per connection:

- header timeout: from the connection's first byte (or its opening) until the request head is
  complete; then 408 and close.
- body timeout: from the end of the head until the whole body has arrived; then 408 (if no
  response has started) and close. The handler waiting for the body sees a disconnect.
- keep-alive timeout: idle time between requests (uvicorn's timer, our setting).
- connection cap: a connection beyond `max_connections` gets 503 + Retry-After and is closed
  at once (a refused connection costs one accept, one write and one close).
- head size cap: a request line + headers over `max_header_bytes` gets 431 and is closed.

Body size is capped where bodies are read (`app.py`, 413); a body nobody reads is not
buffered beyond uvicorn's 64 KiB flow-control mark, and the body timeout ends it.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from dualpath.server.api_errors import error_bytes
from dualpath.server.http_limits import HttpLimits
from dualpath.server.http_protocol import CoalescingHttpToolsProtocol


def raw_error_response(status: int, message: str, *, code: str | None = None,
                       retry_after_s: int | None = None) -> bytes:
    """A complete HTTP/1.1 error response (OpenAI error body) that closes the connection."""
    body = error_bytes(status, message, code=code)
    head = [STATUS_LINE[status], b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body), b"connection: close\r\n"]
    if retry_after_s is not None:
        head.append(b"retry-after: %d\r\n" % retry_after_s)
    return b"".join([*head, b"\r\n", body])


async def _headers_too_large(scope: Any, receive: Any, send: Any) -> None:
    body = error_bytes(431, "request headers too large")
    await send({"type": "http.response.start", "status": 431, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class GuardedHttpToolsProtocol(CoalescingHttpToolsProtocol):
    """uvicorn's httptools protocol (with coalesced writes) plus the limits above.

    Use `guarded_protocol(limits)` to get a subclass bound to a set of limits.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keep_alive_timeout_s  # type: ignore[assignment]
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True  # reading a request head (or waiting for one to start)
        self._head_bytes = 0  # bytes received while reading the current head
        self._head_size = 0  # exact size of the current head's URL and headers

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "too many open connections; retry later",
                         code="too_many_connections", retry_after_s=1)
            return
        self._arm(self.limits.header_timeout_s, self._on_header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if (self._in_head and self._head_bytes > self.limits.max_header_bytes
                and not self.transport.is_closing()):
            self._refuse(431, "request headers too large")

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_size = 0
        if self._deadline is None:
            self._arm(self.limits.header_timeout_s, self._on_header_timeout)

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        too_large = self._head_size > self.limits.max_header_bytes
        if too_large:  # uvicorn runs `self.app` for this request: make it the 431 answer
            app, self.app = self.app, _headers_too_large
        try:
            super().on_headers_complete()
        finally:
            if too_large:
                self.app = app
        self._arm(self.limits.body_timeout_s, self._on_body_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._in_head = True

    # -- timers and refusals -------------------------------------------------------------

    def _arm(self, delay_s: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_header_timeout(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self.transport.close()  # a pipelined head stalled behind a running response
            return
        self._refuse(408, "request headers not received in time", code="request_timeout")

    def _on_body_timeout(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self.transport.close()
            return
        self._refuse(408, "request body not received in time", code="request_timeout")

    def _refuse(self, status: int, message: str, *, code: str | None = None,
                retry_after_s: int | None = None) -> None:
        """Answer `status` and close; a handler still running for this connection sees a
        disconnect and can write nothing more."""
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if not self.transport.is_closing():
            self.transport.write(raw_error_response(status, message, code=code,
                                                    retry_after_s=retry_after_s))
            self.transport.close()


def guarded_protocol(limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to `limits` (pass as `uvicorn.Config(http=...)`)."""
    return type("BoundGuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})
