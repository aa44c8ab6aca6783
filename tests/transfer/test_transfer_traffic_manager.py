"""The per-engine traffic manager: cluster layout, shared SNIC and read queue, metrics."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from transfer_helpers import MB

from dualpath.core.errors import ConfigError
from dualpath.kv import BlockGeometry, MemoryKVStore
from dualpath.transfer.collective import AllToAllShape
from dualpath.transfer.traffic_manager import TrafficManager, plan_cluster_traffic

GEOMETRY = BlockGeometry(num_layers=2, block_tokens=4, bytes_per_token_per_layer=8)


def test_engines_of_a_node_share_its_snic_and_read_queue(tmp_path: Path) -> None:
    specs = plan_cluster_traffic(
        tmp_path, {"p0": ["pe0", "pe1"], "d0": ["de0"]},
        snic_bytes_s=100 * MB, cnic_bytes_s=None, buffer_bytes=1 << 20,
        all_to_all=AllToAllShape(hidden_size=64, experts_per_token=2, ep_size=4))
    assert specs["pe0"].snic == specs["pe1"].snic != specs["de0"].snic
    assert specs["pe0"].cnic.path != specs["pe1"].cnic.path
    assert pickle.loads(pickle.dumps(specs["pe0"])) == specs["pe0"]
    store = MemoryKVStore(GEOMETRY)
    block = np.ones(GEOMETRY.full_block_shape, np.uint8)
    store.put("h", block)
    managers = {e: TrafficManager(s, store=store) for e, s in specs.items()}
    try:
        pe0, pe1, de0 = managers["pe0"], managers["pe1"], managers["de0"]
        assert pe0.store is not None and pe1.store is not None
        assert pe0.store.get("h") is not None and pe1.store.get("h") is not None
        pe0.read_queue.add(640)
        assert pe1.read_queue.tokens() == 640 and de0.read_queue.tokens() == 0
        de0.transport.send(pe0.address, {"layer": 0}, [block[0:1]])
        message = pe0.transport.recv(timeout_s=10)
        assert message is not None and message.sender == de0.address
        assert pe0.collective is not None
        pe0.collective.run_layer(16)
        stats = pe1.stats()
        assert stats["snic.rx.kv.bytes"] == 2 * block.nbytes  # both engines' reads
        assert stats["read_queue_tokens"] == 640
        assert stats["buffer.capacity_bytes"] == 1 << 20
        assert pe0.stats()["cnic.rx.kv.bytes"] == block.nbytes // 2
        assert pe0.stats()["cnic.tx.model.bytes"] == 16 * 64 * 2 * 3 * 3 // 4
        assert de0.stats()["cnic.tx.kv.bytes"] == block.nbytes // 2
    finally:
        for m in managers.values():
            m.close()
            m.close()


def test_bad_plans(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="two nodes"):
        plan_cluster_traffic(tmp_path, {"a": ["e"], "b": ["e"]}, snic_bytes_s=None,
                             cnic_bytes_s=None, buffer_bytes=1)
    with pytest.raises(ConfigError, match="backend"):
        plan_cluster_traffic(tmp_path, {"a": ["e"]}, snic_bytes_s=None, cnic_bytes_s=None,
                             buffer_bytes=1, backend="carrier-pigeon")
