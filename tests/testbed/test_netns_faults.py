"""Fault drills on a 1P2D cluster over network namespaces, while multi-turn chats run:

1. a decode host's compute interface goes down for a while and comes back;
2. the other decode node's agent and engines are killed, then the node is started again;
3. the storage service (Redis) is killed and restarted.

Every turn completes or ends with a clear error — none hangs — and once every node is back the
cluster serves again (a final round of chats, on all three engines).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from dualpath.bench.netns_cluster import NetnsDeployment, NetnsLayout
from dualpath.kv.redis_server import find_redis_server
from dualpath.testbed import Network

pytestmark = [pytest.mark.timeout(1500), pytest.mark.usefixtures("netns_ok")]

LAYOUT = NetnsLayout(prefill_nodes=1, decode_nodes=2, snic_bytes_s=40e6, cnic_bytes_s=80e6)


def _link(name: str, up: bool) -> Any:
    def action(dep: NetnsDeployment) -> None:
        dep.tb[name].set_link(Network.COMPUTE, up)
    action.__name__ = f"{name} compute {'up' if up else 'down'}"
    return action


def _kill_node(name: str) -> Any:
    def action(dep: NetnsDeployment) -> None:
        dep.kill_node(name)
    action.__name__ = f"kill node {name}"
    return action


def _start_node(name: str, config: Any) -> Any:
    def action(dep: NetnsDeployment) -> None:
        dep.start_node(dep.tb[name], config)
    action.__name__ = f"start node {name}"
    return action


def _storage_crash(dep: NetnsDeployment) -> None:
    dep.stop_store(kill=True)
    time.sleep(3.0)
    dep.restart_store()


@pytest.mark.skipif(find_redis_server() is None, reason="redis-server is not installed")
def test_link_down_node_killed_and_storage_restarted(tmp_path: Path) -> None:
    with NetnsDeployment(LAYOUT, tmp_path) as dep:
        url = dep.start_store(tmp_path / "redis")
        config = dep.config(store_path=url, engine_heartbeat_timeout_s=3.0,
                            kv_wait_timeout_s=30.0, peer_timeout_s=20.0)
        # The chats last the whole 120 s however fast the machine is (max_turns is no limit).
        task = {"kind": "conversation", "chats": 4, "turns": 2, "duration_s": 120.0,
                "max_turns": 10_000,
                "max_tokens": 48, "turn_timeout_s": 240, "persist_wait_s": 0.2,
                "after": {"chats": 2, "turns": 2, "max_tokens": 8}}
        # d0's agent gives up on the silent scheduler after 10 s and rejoins (~30 s to get
        # engines up again), so d1 dies only once d0 is surely back: a decode engine is
        # left at all times except by bad luck, and then turns fail with a clear error.
        actions = [(2.0, _link("d0", False)), (12.0, _link("d0", True)),
                   (60.0, _kill_node("d1")), (70.0, _start_node("d1", config)),
                   (90.0, _storage_crash)]
        result = dep.run(config, task, actions=actions, timeout_s=1200)
    turns = [t for chat in result["chats"] for t in chat]
    assert turns, result
    assert not [t for t in turns if t["finish_reason"] == "hung"], "a turn hung"
    for t in turns:
        assert t["finish_reason"] in ("length", "error"), t
        if t["finish_reason"] == "error":
            assert t["error"], t  # a clear error, never a silent one
        else:
            assert len(t["tokens"]) == 48
    assert sum(t["finish_reason"] == "length" for t in turns) >= len(turns) // 2
    assert len(turns) >= 16
    after = [t for chat in result["after"]["chats"] for t in chat]
    assert after and all(t["finish_reason"] == "length" and len(t["tokens"]) == 8
                         for t in after), after
    # Every drill ran while the chats did, and each decode host lost its engine once.
    assert [a["during_main"] for a in result["actions"]] == [True] * len(actions), result["actions"]
    engines = result["engines"].values()
    assert sum(not e["alive"] for e in engines) >= 2
    # Both decode hosts are back (the agent whose link went down rejoined as a new node once
    # the scheduler had been silent too long; the killed one was started again).
    live = [e for e in engines if e["alive"]]
    assert sorted(e["role"] for e in live) == ["decode", "decode", "prefill"]
