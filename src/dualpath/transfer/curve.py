"""CURVE on every internal socket, keyed from the cluster secret.

ZeroMQ's CURVE mechanism (libzmq with libsodium: X25519 key agreement, XSalsa20-Poly1305)
authenticates and encrypts each connection. Every key is derived from the cluster secret
(`core.secret.ClusterSecret`): the scheduler's control socket and the engines' data sockets
are CURVE servers; each engine connects with its own key pair (label `engine/<id>`), a
`dualpath node` agent with the node key. A process without the secret can neither connect nor
read the traffic.

`ZapHandler` is the ZAP endpoint (RFC 27) of one zmq context: it accepts a client only if its
public key is a cluster key that the receiver's policy admits. Accepted connections carry a
`User-Id` ("engine:<id>", "node") on every frame they deliver, which the receivers compare
with what the messages (and the scheduler's routing identities) claim.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import zmq
from zmq.utils import z85

from dualpath.core.secret import ClusterSecret
from dualpath.wire import Rejections

logger = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = "dualpath"
NODE = "node"


def engine_user(engine_id: int) -> str:
    return f"engine:{engine_id}"


def engine_of(user_id: str | None) -> int | None:
    """The engine id of an authenticated User-Id, or None (a node, or no authentication)."""
    if user_id is None or not user_id.startswith("engine:"):
        return None
    return int(user_id[len("engine:"):])


@dataclass(frozen=True)
class Keypair:
    public: bytes  # z85, 40 chars
    secret: bytes

    @classmethod
    def derive(cls, secret: ClusterSecret, label: str) -> Keypair:
        private = z85.encode(secret.derive(f"curve/{label}"))
        return cls(zmq.curve_public(private), private)


class ClusterKeys:
    """Every key pair of one cluster, and the map back from a public key to its owner."""

    def __init__(self, secret: ClusterSecret, max_engine_id: int = 1023) -> None:
        self._secret = secret
        self.max_engine_id = max_engine_id
        self.control_server = Keypair.derive(secret, "control-server")
        self.data_server = Keypair.derive(secret, "data-server")
        self.node = Keypair.derive(secret, NODE)
        self._engines: dict[int, Keypair] = {}
        self._owners: dict[bytes, str] = {self.node.public: NODE}
        self._complete = False
        self._lock = threading.Lock()

    def engine(self, engine_id: int) -> Keypair:
        with self._lock:
            pair = self._engines.get(engine_id)
            if pair is None:
                pair = Keypair.derive(self._secret, f"engine/{engine_id}")
                self._engines[engine_id] = pair
                self._owners[pair.public] = engine_user(engine_id)
            return pair

    def owner(self, public: bytes) -> str | None:
        """Who `public` (z85) belongs to: "engine:<id>", "node", or None for a stranger. The
        first unknown key completes the table of engine ids once (~0.1 s), so strangers never
        cost more than a dict lookup after that."""
        with self._lock:
            found = self._owners.get(public)
            if found is not None or self._complete:
                return found
        for engine_id in range(self.max_engine_id + 1):
            self.engine(engine_id)
        with self._lock:
            self._complete = True
            return self._owners.get(public)


def make_server(sock: zmq.Socket, pair: Keypair) -> None:
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    sock.curve_server = True


def make_client(sock: zmq.Socket, pair: Keypair, server_public: bytes) -> None:
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    sock.curve_serverkey = server_public


class ZapHandler:
    """The ZAP endpoint of `ctx` (start one per context that binds CURVE servers).

    `allow(user)` decides about an authenticated cluster member (e.g. only engines the
    scheduler expects); refused connections are counted in `rejections` under "auth".
    """

    def __init__(self, ctx: zmq.Context, keys: ClusterKeys,
                 allow: Callable[[str], bool] = lambda user: True,
                 rejections: Rejections | None = None) -> None:
        self._ctx = ctx
        self._keys = keys
        self._allow = allow
        self.rejections = rejections if rejections is not None else Rejections()
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(ZAP_ENDPOINT)
        self._stop = threading.Event()
        self._monitors: list[zmq.Socket] = []
        self._new_monitors: list[zmq.Socket] = []
        self._thread = threading.Thread(target=self._loop, daemon=True, name="zap")
        self._thread.start()

    def watch(self, server: zmq.Socket) -> None:
        """Count failed CURVE handshakes on `server` (a key from another cluster, a client
        without CURVE, garbage bytes) under "handshake": those never reach ZAP."""
        address = f"inproc://dualpath-monitor-{id(self)}-{len(self._new_monitors)}"
        server.monitor(address, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                       | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        monitor = self._ctx.socket(zmq.PAIR)  # a plain socket: it is read in this thread
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(address)
        self._new_monitors.append(monitor)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                while self._new_monitors:
                    monitor = self._new_monitors.pop()
                    self._monitors.append(monitor)
                    poller.register(monitor, zmq.POLLIN)
                events = dict(poller.poll(100))
                for monitor in self._monitors:
                    if monitor in events:
                        monitor.recv_multipart()
                        self.rejections.count("handshake")
                if self._sock not in events:
                    continue
                request = self._sock.recv_multipart()
                self._sock.send_multipart(self._reply(request))
            except zmq.ZMQError:
                if self._stop.is_set():
                    return
                logger.exception("ZAP handler")
            except Exception:  # a bad request must not end the handler
                logger.exception("ZAP handler")

    def _reply(self, frames: list[bytes]) -> list[bytes]:
        if len(frames) < 6:
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"400", b"bad request", b"",
                    b""]
        version, request_id, _domain, address, _identity, mechanism = frames[:6]
        user = None
        if mechanism == b"CURVE" and len(frames) == 7 and len(frames[6]) == 32:
            user = self._keys.owner(z85.encode(frames[6]))
        ok = user is not None and self._allow(user)
        if not ok:
            self.rejections.count("auth")
            logger.warning("refused an internal connection from %s (%s)",
                           address.decode(errors="replace"), user or "unknown key")
            return [version, request_id, b"400", b"not a member of this cluster", b"", b""]
        assert user is not None
        return [version, request_id, b"200", b"OK", user.encode(), b""]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for monitor in self._monitors + self._new_monitors:
            monitor.close(0)
        self._sock.close(0)
