"""A 1P2D DualPath cluster over five network namespaces (front end, Redis storage, one
prefill and two decode hosts), every process a real CLI process, CURVE on every internal
connection, the SNICs and CNICs shaped by the kernel.

Greedy answers (the non-degenerate `tiny` preset; SmolLM2 in the slow variant) are identical whether the prefix KV comes through the prefill host's storage
interface (`--read-path pe`), the decode hosts' (`de`), or is recomputed (`--no-kv-store`);
later turns report cached tokens; and the KV bytes the cluster counts on each path agree
within 5 % with what the kernel counted on those hosts' storage interfaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dualpath.bench.netns_cluster import NetnsDeployment, NetnsLayout
from dualpath.kv.redis_server import find_redis_server

pytestmark = [pytest.mark.timeout(1500), pytest.mark.usefixtures("netns_ok")]

LAYOUT = NetnsLayout(prefill_nodes=1, decode_nodes=2, snic_bytes_s=40e6, cnic_bytes_s=80e6)
TASK = {"kind": "conversation", "chats": 2, "turns": 3, "max_tokens": 8}


def _tokens(result: dict[str, Any]) -> list[list[list[int]]]:
    return [[turn["tokens"] for turn in chat] for chat in result["chats"]]


def _counted(result: dict[str, Any], key: str) -> float:
    return sum(c.get(key, 0.0) for c in result["counters"].values())


def _storage_rx(result: dict[str, Any], hosts: list[str]) -> int:
    return sum(result["kernel_counters_delta"][h]["storage"]["rx_bytes"] for h in hosts)


@pytest.mark.skipif(find_redis_server() is None, reason="redis-server is not installed")
@pytest.mark.parametrize("model", ["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_read_paths_agree_over_kernel_shaped_networks(tmp_path: Path, model: str) -> None:
    with NetnsDeployment(LAYOUT, tmp_path) as dep:
        results = {}
        for mode in ("cold", "pe", "de"):
            url = dep.start_store(tmp_path / f"redis-{mode}")
            config = dep.config(store_path=url, use_kv_store=mode != "cold", model=model,
                                read_path="auto" if mode == "cold" else mode)
            results[mode] = dep.run(config, TASK)
            dep.stop_store()
        cold, pe, de = results["cold"], results["pe"], results["de"]
        assert _tokens(pe) == _tokens(cold) and _tokens(de) == _tokens(cold)
        assert len({t for chat in _tokens(cold) for turn in chat for t in turn}) >= 8
        for result in (pe, de):
            for chat in result["chats"]:
                assert all(t["finish_reason"] == "length" for t in chat)
                assert chat[0]["cached_tokens"] == 0
                assert all(t["cached_tokens"] >= 128 for t in chat[1:]), chat
        assert all(t["cached_tokens"] == 0 for chat in cold["chats"] for t in chat)
        # The bytes moved on the forced path only, and the kernel saw them there.
        assert _counted(pe, "bytes_read_de_path") == 0 and _counted(de, "bytes_read_pe_path") == 0
        pe_bytes, de_bytes = _counted(pe, "bytes_read_pe_path"), _counted(de, "bytes_read_de_path")
        assert pe_bytes > 0 and de_bytes > 0
        assert _storage_rx(pe, ["p0"]) == pytest.approx(pe_bytes, rel=0.05)
        assert _storage_rx(de, ["d0", "d1"]) == pytest.approx(de_bytes, rel=0.05)
        assert _storage_rx(pe, ["d0", "d1"]) < 0.05 * pe_bytes  # decode hosts read nothing
        assert _storage_rx(de, ["p0"]) < 0.05 * de_bytes
        # Engine-to-engine KV went over the compute network, between the hosts involved.
        assert pe["kernel_counters_delta"]["p0"]["compute"]["tx_bytes"] > pe_bytes
