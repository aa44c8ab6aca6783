"""A DualPath deployment across the netns testbed's hosts (root only).

`store` runs Redis (the networked KV store) on the storage network; `fe` runs the scheduler
process (`bench.netns_worker`, a `LocalCluster` with no local engines); every prefill and
decode host runs a `dualpath node` agent whose engines bind on that host's compute address.
Every byte between them crosses a veth pair: storage reads the host's storage interface (its
SNIC), KV between engines the hosts' compute interfaces (their CNICs), each shaped by `tc` in
the kernel; the engines' own NIC emulation is off (`nic_shaping="kernel"`).

    with NetnsDeployment(NetnsLayout(snic_bytes_s=8e6, cnic_bytes_s=64e6), work) as dep:
        url = dep.start_store(work / "redis")
        out = dep.run(dep.config(store_path=url), {"kind": "conversation"})
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from dualpath.core.config import ClusterConfig
from dualpath.core.errors import EngineError
from dualpath.core.secret import ClusterSecret
from dualpath.kv.redis_server import RedisServerConfig, find_redis_server
from dualpath.testbed import Host, HostRole, Testbed, TestbedSpec

logger = logging.getLogger(__name__)

CONTROL_PORT = 7000
REDIS_PORT = 6379


@dataclass(frozen=True)
class NetnsLayout:
    prefill_nodes: int = 1
    decode_nodes: int = 2
    snic_bytes_s: float | None = 8e6
    cnic_bytes_s: float | None = 64e6


Action = tuple[float, Callable[["NetnsDeployment"], None]]


class NetnsDeployment:
    def __init__(self, layout: NetnsLayout, work_dir: Path) -> None:
        self.layout = layout
        self.work = Path(work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.tb = Testbed(TestbedSpec.cluster(layout.prefill_nodes, layout.decode_nodes,
                                              snic_bytes_s=layout.snic_bytes_s,
                                              cnic_bytes_s=layout.cnic_bytes_s))
        self.secret_path = self.work / "cluster.secret"
        self._redis: subprocess.Popen[bytes] | None = None
        self._redis_config: RedisServerConfig | None = None
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> NetnsDeployment:
        ClusterSecret.load_or_create(self.secret_path)
        self.tb.up()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_nodes()
        self.stop_store()
        self.tb.down()

    # ---- hosts ---------------------------------------------------------------------------

    @property
    def fe(self) -> Host:
        return self.tb["fe"]

    def node_hosts(self) -> list[Host]:
        return [h for h in self.tb.hosts if h.role in (HostRole.PREFILL, HostRole.DECODE)]

    def counters(self) -> dict[str, dict[str, dict[str, int]]]:
        """Kernel interface counters of every host: {host: {network: fields}}."""
        return {h.name: {net.name.lower(): dataclasses.asdict(c)
                         for net, c in h.counters().items()} for h in self.tb.hosts}

    # ---- the store -----------------------------------------------------------------------

    def start_store(self, data_dir: Path) -> str:
        """Redis on the storage host (AOF persistence in `data_dir`); its URL."""
        binary = find_redis_server()
        if binary is None:
            raise EngineError("redis-server not found (Debian: apt-get install redis-server)")
        data_dir.mkdir(parents=True, exist_ok=True)
        store = self.tb["store"]
        assert store.storage_addr is not None
        # AUTH with a password derived from the cluster secret: only cluster members can
        # reach the blocks (Redis also refuses password-less remote clients).
        password = ClusterSecret.read(self.secret_path).derive("redis").hex()
        cfg = RedisServerConfig(dir=data_dir, port=REDIS_PORT, bind=store.storage_addr,
                                password=password)
        self._redis_config = cfg
        self._redis = store.popen(cfg.argv(binary), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        self._wait_port(store, store.storage_addr, REDIS_PORT)
        return cfg.url

    def stop_store(self, *, kill: bool = False) -> None:
        if self._redis is not None and self._redis.poll() is None:
            self._redis.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self._redis.wait(timeout=60)
        self._redis = None

    def restart_store(self) -> None:
        assert self._redis_config is not None
        self.start_store(self._redis_config.dir)

    def _wait_port(self, host: Host, addr: str, port: int, timeout_s: float = 30.0) -> None:
        probe = ("import socket,sys\ns=socket.socket()\ns.settimeout(1)\n"
                 f"sys.exit(s.connect_ex(({addr!r}, {port})))")
        deadline = time.monotonic() + timeout_s
        while host.run([sys.executable, "-c", probe], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise EngineError(f"nothing listens on {addr}:{port} in {host.name}")
            time.sleep(0.2)

    # ---- the cluster ---------------------------------------------------------------------

    def config(self, **fields: Any) -> ClusterConfig:
        """A cluster config for this deployment (any field may be overridden)."""
        assert self.fe.compute_addr is not None
        base: dict[str, Any] = dict(
            model="tiny", prefill_nodes=self.layout.prefill_nodes,
            decode_nodes=self.layout.decode_nodes, internal_host=self.fe.compute_addr,
            control_port=CONTROL_PORT, cluster_secret_path=str(self.secret_path),
            local_engines=False, accept_nodes=True, nic_shaping="kernel",
            snic_bytes_s=self.layout.snic_bytes_s, cnic_bytes_s=self.layout.cnic_bytes_s,
            decode_kv_bytes=64 << 20, pe_buffer_bytes=64 << 20, de_buffer_bytes=64 << 20,
            engine_start_timeout_s=300, engine_heartbeat_timeout_s=10.0)
        base.update(fields)
        return ClusterConfig(**base)

    def start_node(self, host: Host, config: ClusterConfig) -> subprocess.Popen[bytes]:
        assert host.compute_addr is not None and self.fe.compute_addr is not None
        role = "prefill" if host.role is HostRole.PREFILL else "decode"
        log = open(self.work / f"node-{host.name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = host.popen(
            [sys.executable, "-m", "dualpath", "--log-level", "INFO", "node",
             "--join", f"{self.fe.compute_addr}:{config.control_port}", "--role", role,
             "--internal-host", host.compute_addr, "--cluster-secret", str(self.secret_path),
             *(["--store-path", config.store_path] if config.use_kv_store else [])],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.nodes[host.name] = proc
        return proc

    def kill_node(self, name: str) -> None:
        """A node's agent and engines die at once (its engines follow their parent)."""
        proc = self.nodes.pop(name, None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def stop_nodes(self) -> None:
        for proc in self.nodes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.nodes.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.nodes.clear()

    def run(self, config: ClusterConfig, task: dict[str, Any], *, timeout_s: float = 900,
            actions: Sequence[Action] = ()) -> dict[str, Any]:
        """Run `task` (see `bench.netns_worker`) on a fresh scheduler in `fe` and fresh node
        agents on every node host; `actions` are (seconds after the cluster is ready,
        callable) fault drills. Returns the worker's JSON with `kernel_counters_delta`."""
        out = self.work / f"task-{time.monotonic_ns()}.json"
        spec = dict(task, config=json.loads(config.to_json()), out=str(out),
                    expect=[self.layout.prefill_nodes, self.layout.decode_nodes])
        task_file = out.with_suffix(".task.json")
        task_file.write_text(json.dumps(spec))
        before = self.counters()
        with open(self.work / "worker.log", "ab") as log:
            worker = self.fe.popen([sys.executable, "-m", "dualpath.bench.netns_worker",
                                    str(task_file)], stdout=log, stderr=subprocess.STDOUT)
        try:
            for host in self.node_hosts():
                self.start_node(host, config)
            pending = sorted(actions, key=lambda a: a[0])
            done: list[dict[str, Any]] = []
            ready_file = Path(str(out) + ".ready")
            main_done = Path(str(out) + ".main-done")
            ready_s: float | None = None
            deadline = time.monotonic() + timeout_s
            while worker.poll() is None:
                if ready_s is None and ready_file.exists():
                    ready_s = time.monotonic()
                if ready_s is not None and pending and time.monotonic() - ready_s >= pending[0][0]:
                    at, action = pending.pop(0)
                    name = getattr(action, "__name__", repr(action))
                    logger.info("fault drill at +%.0f s: %s", at, name)
                    during = not main_done.exists()
                    action(self)
                    done.append({"action": name, "at_s": at, "during_main": during})
                if time.monotonic() > deadline:
                    raise EngineError(f"the netns task did not finish within {timeout_s:g} s "
                                      f"(see {self.work / 'worker.log'})")
                time.sleep(0.1)
            if worker.returncode != 0:
                raise EngineError(f"the netns worker failed (exit {worker.returncode}); see "
                                  f"{self.work / 'worker.log'}")
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=30)
            self.stop_nodes()
        result: dict[str, Any] = json.loads(out.read_text())
        result["actions"] = done
        after = self.counters()
        result["kernel_counters_delta"] = {
            host: {net: {k: v - before[host][net][k] for k, v in fields.items()}
                   for net, fields in nets.items()} for host, nets in after.items()}
        return result

