"""uvicorn's httptools protocol with the writes of one event-loop turn joined into one.

uvicorn writes a response's status line + headers and its body with two `transport.write`
calls, i.e. two send syscalls, two TCP segments and two wake-ups of the client. On loopback
the sender pays for the receiver's TCP processing as well, and profiling showed those writes
to be the largest single cost of a small response. `CoalescingTransport` buffers the writes
made within one turn of the event loop and sends them together at the end of the turn (a
`call_soon`), so a small response leaves in one segment and streamed chunks produced in the
same turn are batched. Nothing waits longer than the current turn. (Sending the held headers
together with the body at once, instead of at the end of the turn, measured ~15% fewer
requests/s under load: deferring also lets one turn answer many connections before the
clients are woken.)
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Forwards everything to `transport`; `write` is deferred to the end of the loop turn."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol over a `CoalescingTransport` (pass as `uvicorn.Config(http=...)`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped = CoalescingTransport(transport, self.loop)
        super().connection_made(cast(asyncio.Transport, wrapped))
