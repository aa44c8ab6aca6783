"""Nodes that join: a scheduler with no local engines, and `dualpath node` agents (real
processes, CURVE-authenticated with the cluster secret) that bring one prefill and two decode
nodes. Answers match a local cluster's; a decode node that dies mid-run is handled like an
engine death (its requests finish on the other); a node agent started again joins again and
the cluster serves on it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster_helpers import run_conversation, run_request

from dualpath.core.config import ClusterConfig
from dualpath.runtime.cluster import LocalCluster

pytestmark = pytest.mark.timeout(420)


def _config(tmp_path: Path, **kw: object) -> ClusterConfig:
    base: dict[str, object] = dict(
        model="tiny", store_path=str(tmp_path / "store"), decode_kv_bytes=32 << 20,
        pe_buffer_bytes=32 << 20, de_buffer_bytes=32 << 20, engine_start_timeout_s=120,
        cluster_secret_path=str(tmp_path / "secret"), engine_heartbeat_timeout_s=3.0)
    base.update(kw)
    return ClusterConfig(**base)  # type: ignore[arg-type]


def _node(control: str, role: str, secret: Path, log: Path) -> subprocess.Popen[bytes]:
    join = control.removeprefix("tcp://")
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dualpath", "--log-level", "INFO", "node", "--join", join,
             "--role", role, "--cluster-secret", str(secret)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


async def _until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def test_remote_nodes_join_serve_die_and_rejoin(tmp_path: Path) -> None:
    async def main() -> None:
        local = LocalCluster(_config(tmp_path / "local", cluster_secret_path=None))
        await local.start()
        try:
            reference = await run_conversation(local, "ref")
        finally:
            await local.shutdown()

        cluster = LocalCluster(_config(tmp_path, local_engines=False, accept_nodes=True))
        await cluster.start()
        nodes: list[subprocess.Popen[bytes]] = []
        try:
            assert not cluster.is_ready()  # no engine yet
            secret = tmp_path / "secret"
            assert secret.stat().st_mode & 0o777 == 0o600
            for role in ("prefill", "decode", "decode"):
                nodes.append(_node(cluster.control_address, role, secret,
                                   tmp_path / f"node{len(nodes)}.log"))
            await _until(lambda: len(cluster.books.ledger.live_engines()) == 3
                         and cluster.is_ready(), 240, "three engines to join")
            results = await run_conversation(cluster, "ref")
            assert [r.tokens for r in results] == [r.tokens for r in reference]
            assert all(r.finish.cached_tokens >= 128 for r in results[1:])

            # A decode node dies while answering: its requests finish on the other one.
            tasks = [asyncio.create_task(run_request(cluster, f"r{i}", [(i * 13 + k) % 256
                                                                        for k in range(100)],
                                                     max_tokens=200)) for i in range(4)]
            await _until(lambda: any(r.attempt is not None and len(r.generated) > 3
                                     for r in cluster.books.live()), 60, "decoding")
            busy = next(r.attempt.de for r in cluster.books.live()
                        if r.attempt is not None and len(r.generated) > 3)
            engine_pid = cluster.books.ledger.engines[busy].pid
            agent_pid = int(Path(f"/proc/{engine_pid}/stat").read_text().split()[3])
            victim = next(p for p in nodes if p.pid == agent_pid)
            os.killpg(victim.pid, signal.SIGKILL)  # the agent; its engines follow it
            done = await asyncio.wait_for(asyncio.gather(*tasks), 120)
            assert all(r.finish.finish_reason == "length" and len(r.tokens) == 200 for r in done)
            # The engine outlives its agent by up to its parent-watch period (0.5 s), so on a
            # fast machine it may finish its requests itself; its death is then seen only
            # when its heartbeats stop.
            await _until(lambda: len(cluster.books.ledger.live_engines()) == 2, 60,
                         "the dead node's engine to leave the ledger")

            # The node comes back (a new agent): it joins again and takes work.
            nodes.append(_node(cluster.control_address, "decode", secret,
                               tmp_path / "node-again.log"))
            await _until(lambda: len(cluster.books.ledger.live_engines()) == 3, 240,
                         "the node to rejoin")
            again = await run_conversation(cluster, "ref")
            assert [r.tokens for r in again] == [r.tokens for r in reference]
        finally:
            await cluster.shutdown()
            for proc in nodes:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in nodes:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)

    asyncio.run(main())
