"""The scheduler process's end of the internal control plane: one CURVE-secured zmq ROUTER.

Engines (DEALER, routing identity = their engine id) and `dualpath node` agents connect here;
the ZAP handler admits only cluster members that `allow` accepts, and binds each connection's
routing identity to its key, so the `User-Id` every received frame carries says who really
sent it. Frames are handed out raw; decoding and validation are the caller's (`wire`).
"""

from __future__ import annotations

from collections.abc import Callable

import zmq
import zmq.asyncio

from dualpath import wire
from dualpath.core.errors import ConfigError
from dualpath.transfer.curve import ClusterKeys, ZapHandler, make_server
from dualpath.wire import Rejections


class ControlPlane:
    """Bind with `open(host, port)`; `recv` / `send` from the event loop; `close` at the end."""

    def __init__(self, keys: ClusterKeys, allow: Callable[[str], bool],
                 rejections: Rejections) -> None:
        self._sync_ctx = zmq.Context()
        # ZAP is per libzmq context: the asyncio sockets share the sync context underneath.
        self._ctx = zmq.asyncio.Context.shadow(self._sync_ctx.underlying)
        self._zap = ZapHandler(self._sync_ctx, keys, allow, rejections)
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        # No ROUTER_HANDOVER: a second connection under a live engine's routing id is refused,
        # so no member can take over another's route. zmq heartbeats drop the connection of an
        # engine whose host vanished, so its restarted process can reconnect under its id.
        self._router.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        self._router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        make_server(self._router, keys.control_server)
        self._zap.watch(self._router)
        self.address = ""

    def open(self, host: str, port: int) -> str:
        try:
            if port:
                self._router.bind(f"tcp://{host}:{port}")
            else:
                port = self._router.bind_to_random_port(f"tcp://{host}")
        except zmq.ZMQError as exc:
            self.close()
            raise ConfigError(f"cannot bind the control plane on {host}:{port}: {exc}") from None
        self.address = f"tcp://{host}:{port}"
        return self.address

    async def poll(self, timeout_ms: int) -> bool:
        return bool(await self._router.poll(timeout_ms))

    async def recv(self) -> tuple[list[bytes], str | None]:
        """The next message's frames (identity first) and its sender's authenticated User-Id."""
        frames = await self._router.recv_multipart(copy=False)
        user = frames[-1].get("User-Id") if len(frames) > 1 else None
        return [f.bytes for f in frames], user if isinstance(user, str) else None

    def send(self, identity: bytes, msg: wire.control.ToEngine | wire.control.ToNode) -> None:
        self._router.send_multipart([identity, wire.encode(msg)])

    def close(self) -> None:
        self._router.close(0)
        self._zap.close()
        self._sync_ctx.term()  # the asyncio shadow shares this context
