"""Who may be in the cluster, and who has gone quiet. Pure (time comes in as `now_s`).

Local engines are known from the start; a `dualpath node` agent that joins gets the next node
id and engine ids. The ZAP handler asks `allows` before a connection is accepted (an engine id
nobody was given is refused even with a cluster key). Every report from an engine counts as
its heartbeat; `silent` lists the engines not heard from within the timeout.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from dualpath import wire
from dualpath.core.config import ClusterConfig
from dualpath.transfer.curve import NODE, engine_of
from dualpath.wire import control as ctl

logger = logging.getLogger(__name__)


@dataclass
class NodeInfo:
    node_id: int
    role: str
    engine_ids: list[int]
    host: str
    last_ping_s: float


@dataclass
class Membership:
    config: ClusterConfig
    next_node_id: int = 0
    next_engine_id: int = 0
    engines: set[int] = field(default_factory=set)  # every engine id ever handed out
    nodes: dict[int, NodeInfo] = field(default_factory=dict)  # joined (remote) nodes
    last_seen_s: dict[int, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # allows() runs in ZAP's thread

    def add_local(self, engine_ids: list[int], num_nodes: int) -> None:
        with self._lock:
            self.engines.update(engine_ids)
            self.next_engine_id = max(self.engines, default=-1) + 1
            self.next_node_id = num_nodes

    def allows(self, user: str) -> bool:
        """ZAP policy: engines we handed an id to, and node agents if nodes may join."""
        engine = engine_of(user)
        with self._lock:
            if engine is not None:
                return engine in self.engines
            return user == NODE and self.config.accept_nodes

    def on_node_message(self, msg: ctl.ToScheduler, now_s: float) -> ctl.ToNode:
        """The reply to a node agent's frame: a join or a ping; anything else is refused."""
        if isinstance(msg, ctl.NodeJoin):
            reply = self.join(msg, now_s)
            if isinstance(reply, ctl.NodeWelcome):
                logger.info("node %d (%s, %d engines, %s) joined", reply.node_id, msg.role,
                            msg.engines, msg.host)
            return reply
        if isinstance(msg, ctl.NodePing):
            return self.ping(msg, now_s)
        raise wire.FrameRejected("identity", f"a node sent {type(msg).__name__}")

    def join(self, msg: ctl.NodeJoin, now_s: float) -> ctl.NodeWelcome | ctl.NodeRefused:
        if not self.config.accept_nodes:
            return ctl.NodeRefused("this scheduler does not accept nodes (serve --accept-nodes)")
        with self._lock:
            if self.next_engine_id + msg.engines > self.config.max_engines:
                return ctl.NodeRefused(f"the cluster is full (max_engines="
                                       f"{self.config.max_engines})")
            ids = list(range(self.next_engine_id, self.next_engine_id + msg.engines))
            node = NodeInfo(self.next_node_id, msg.role, ids, msg.host, now_s)
            self.nodes[node.node_id] = node
            self.engines.update(ids)
            self.next_engine_id += msg.engines
            self.next_node_id += 1
        config = self.config.to_json()
        return ctl.NodeWelcome(node.node_id, ids, config)

    def ping(self, msg: ctl.NodePing, now_s: float) -> ctl.NodePong:
        node = self.nodes.get(msg.node_id)
        if node is not None:
            node.last_ping_s = now_s
        return ctl.NodePong(msg.node_id, known=node is not None)

    def node_of(self, engine_id: int) -> int | None:
        for node in self.nodes.values():
            if engine_id in node.engine_ids:
                return node.node_id
        return None

    def heard(self, engine_id: int, now_s: float) -> None:
        self.last_seen_s[engine_id] = now_s

    def silent(self, alive: list[int], now_s: float) -> list[int]:
        """Engines in `alive` not heard from within the heartbeat timeout."""
        limit = self.config.engine_heartbeat_timeout_s
        return [e for e in alive if now_s - self.last_seen_s.get(e, now_s) > limit]

    def recently_heard(self, engine_ids: list[int], now_s: float) -> list[int]:
        limit = self.config.engine_heartbeat_timeout_s
        return [e for e in engine_ids if now_s - self.last_seen_s.get(e, -1e18) <= limit]
