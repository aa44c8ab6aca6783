"""`dualpath node`: one host's engines joining a running scheduler process.

The agent connects to the scheduler's control plane with the cluster's node key (CURVE), asks
to join (`NodeJoin`), and starts the node's engine processes with the ids and the cluster
config it is given (its own internal address and store location override the scheduler's).
Its engines then talk to the scheduler directly, like local ones. The agent pings the
scheduler every second; it restarts a dead engine with backoff (the engine rejoins under its
id), and if the scheduler stops answering — or no longer knows the node — it stops its engines
and joins again, so a restarted scheduler gets the node back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time

import zmq

from dualpath import wire
from dualpath.core.config import ClusterConfig
from dualpath.core.errors import ConfigError
from dualpath.core.secret import ClusterSecret
from dualpath.runtime.launcher import EngineProcesses, EngineSpec
from dualpath.runtime.restart_policy import RestartPolicy
from dualpath.transfer.curve import ClusterKeys, make_client
from dualpath.wire import control as ctl

logger = logging.getLogger(__name__)

PING_INTERVAL_S = 1.0
SCHEDULER_SILENT_S = 10.0  # no answer for this long: the scheduler is gone, join again


@dataclasses.dataclass(frozen=True)
class NodeOptions:
    join: str  # host:port of the scheduler's control plane
    role: str
    engines: int
    secret_path: str
    internal_host: str  # where this node's engines bind their data sockets
    store_path: str | None = None  # this host's path (or URL) of the shared store
    mooncake_device: str | None = None  # this host's RDMA device (--transfer mooncake)


class NodeAgent:
    def __init__(self, options: NodeOptions) -> None:
        self.options = options
        self._keys = ClusterKeys(ClusterSecret.read(options.secret_path))
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self.node_id: int | None = None
        self.engine_ids: list[int] = []

    @property
    def control_address(self) -> str:
        return f"tcp://{self.options.join}"

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Join, run the engines, rejoin when needed; until `request_stop`."""
        try:
            while not self._stop.is_set():
                welcome = self._join()
                if welcome is None:
                    continue
                self._serve(welcome)
        finally:
            if self._sock is not None:
                self._sock.close(0)
            self._ctx.term()

    # ---- joining -----------------------------------------------------------------------------

    def _connect(self) -> zmq.Socket[bytes]:
        if self._sock is not None:
            self._sock.close(0)
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, b"node-" + secrets.token_hex(8).encode())
        make_client(sock, self._keys.node, self._keys.control_server.public)
        sock.connect(self.control_address)
        self._sock = sock
        return sock

    def _join(self) -> ctl.NodeWelcome | None:
        sock = self._connect()
        o = self.options
        sock.send(wire.encode(ctl.NodeJoin(o.role, o.engines, o.internal_host, os.getpid())))  # type: ignore[arg-type]
        deadline = time.monotonic() + SCHEDULER_SILENT_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            reply = self._recv(timeout_ms=200)
            if isinstance(reply, ctl.NodeRefused):
                raise ConfigError(f"the scheduler at {o.join} refused this node: {reply.reason}")
            if isinstance(reply, ctl.NodeWelcome):
                logger.info("joined as node %d with engines %s", reply.node_id, reply.engine_ids)
                return reply
        if not self._stop.is_set():
            logger.warning("no answer from the scheduler at %s; trying again", o.join)
        return None

    def _recv(self, timeout_ms: int) -> ctl.ToNode | None:
        assert self._sock is not None
        if not self._sock.poll(timeout_ms):
            return None
        try:
            return wire.decode_to_node(self._sock.recv())
        except wire.FrameRejected as exc:
            logger.warning("dropped a frame from the scheduler: %s", exc)
            return None

    # ---- running the engines -------------------------------------------------------------------

    def _engine_config(self, welcome: ctl.NodeWelcome) -> ClusterConfig:
        config = ClusterConfig.from_json(welcome.config_json)
        changes: dict[str, object] = {"internal_host": self.options.internal_host}
        if self.options.store_path:
            changes["store_path"] = self.options.store_path
        if self.options.mooncake_device:
            changes["mooncake_device"] = self.options.mooncake_device
        return dataclasses.replace(config, **changes)  # type: ignore[arg-type]

    def _serve(self, welcome: ctl.NodeWelcome) -> None:
        self.node_id, self.engine_ids = welcome.node_id, list(welcome.engine_ids)
        config = self._engine_config(welcome)
        run_dir = tempfile.mkdtemp(prefix=f"dualpath-node{welcome.node_id}-")
        procs = EngineProcesses(config, self.control_address, run_dir, self.options.secret_path)
        policy = RestartPolicy()
        restart_at: dict[int, float] = {}
        for rank, engine_id in enumerate(welcome.engine_ids):
            procs.start(EngineSpec(engine_id, welcome.node_id, self.options.role, rank))
            policy.started(engine_id, time.monotonic())
        last_answer = time.monotonic()
        next_ping = 0.0
        # As patient as the scheduler is with this node's engines (its heartbeat timeout).
        silent_s = max(SCHEDULER_SILENT_S, config.engine_heartbeat_timeout_s)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_ping:
                    assert self._sock is not None
                    self._sock.send(wire.encode(ctl.NodePing(welcome.node_id)))
                    next_ping = now + PING_INTERVAL_S
                reply = self._recv(timeout_ms=200)
                if isinstance(reply, ctl.NodePong):
                    if not reply.known:
                        logger.warning("the scheduler no longer knows node %d; joining again",
                                       welcome.node_id)
                        return
                    last_answer = time.monotonic()
                if time.monotonic() - last_answer > silent_s:
                    logger.warning("the scheduler has not answered for %g s; joining again",
                                   silent_s)
                    return
                now = time.monotonic()
                for engine_id in procs.poll_dead():
                    delay = policy.delay_after_death(engine_id, now)
                    logger.error("engine %d died; restarting it in %.1f s", engine_id, delay)
                    restart_at[engine_id] = now + delay
                for engine_id, at in list(restart_at.items()):
                    if now >= at:
                        del restart_at[engine_id]
                        procs.start(procs.spec(engine_id))
                        policy.started(engine_id, now)
        finally:
            procs.stop()
            if not os.environ.get("DUALPATH_KEEP_RUN_DIR"):
                shutil.rmtree(run_dir, ignore_errors=True)
