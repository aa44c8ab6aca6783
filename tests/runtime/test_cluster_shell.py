"""The scheduler process's shell without engine processes: what it advertises, how it turns
engine reports into metrics, and that a bad frame from any engine is counted and dropped."""

from __future__ import annotations

from pathlib import Path

from books_harness import DE1, DE2, KV_CAPACITY_TOKENS, PE

from dualpath import wire
from dualpath.core.config import ClusterConfig
from dualpath.runtime.cluster import LocalCluster
from dualpath.wire import control as ctl
from dualpath.wire.types import AttemptId


def _cluster(tmp_path: Path) -> LocalCluster:
    cluster = LocalCluster(ClusterConfig(model="tiny", store_path=str(tmp_path / "store")))
    cluster.membership.add_local([PE, DE1, DE2], 3)
    for engine_id, role in ((PE, "prefill"), (DE1, "decode"), (DE2, "decode")):
        hello = ctl.Hello(engine_id=engine_id, node_id=engine_id, role=role,  # type: ignore[arg-type]
                          data_address=f"tcp://a{engine_id}:1",
                          kv_capacity_tokens=KV_CAPACITY_TOKENS if role == "decode" else 0,
                          pid=1, prefill_tokens_per_s=1000.0)
        cluster._on_frames([str(engine_id).encode(), wire.encode(hello)], f"engine:{engine_id}")
    return cluster


def test_max_model_len_is_capped_by_the_largest_decode_engine(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    bs = cluster.config.block_size
    assert len(cluster.books.ledger.engines) == 3
    assert cluster.max_model_len == min(cluster.model_config.max_position_embeddings,
                                        KV_CAPACITY_TOKENS // bs * bs)


def test_bad_frames_are_counted_and_dropped(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    attempt = AttemptId("r", 1)
    de1 = "engine:1"
    bad = [
        ([b"1", b"\x00garbage"], de1),  # not a frame
        ([b"1", b"DP\x01\x85\xa4type"], de1),  # truncated msgpack
        ([b"1", b"DP\x09" + b"x"], de1),  # another wire version
        ([b"1", wire.encode(ctl.Abort(attempt))], de1),  # a scheduler -> engine message
        ([b"2", wire.encode(ctl.EngineStats(engine_id=2, counters={}))], de1),  # wrong id
        ([b"1", wire.encode(ctl.EngineStats(engine_id=2, counters={}))], de1),  # speaks for DE2
        ([b"1", wire.encode(ctl.Tokens(2, attempt, [1]))], de1),  # likewise
        ([b"1", wire.encode(ctl.Hello(engine_id=1, node_id=1, role="decode",
                                      data_address="tcp://evil:1", kv_capacity_tokens=1,
                                      pid=1))], de1),  # a second Hello for a live engine
        ([b"1", wire.encode(ctl.EngineStats(engine_id=1, counters={}))], None),  # no auth
        ([b"1"], de1),  # no payload frame
    ]
    for frames, user in bad:
        cluster._on_frames(frames, user)
    assert cluster.membership.allows("engine:2") and not cluster.membership.allows("engine:7")
    assert not cluster.membership.allows("node")  # nodes may not join this cluster
    rejected = cluster.metrics_snapshot().internal_frames_rejected
    assert sum(rejected.values()) == len(bad), rejected
    assert set(rejected) == {"magic", "malformed", "version", "invalid", "identity", "frames"}
    assert cluster.books.ledger.engines[DE1].data_address == "tcp://a1:1"


def test_metrics_forget_a_dead_engines_buffer_and_nic_load(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    busy = {"buffer.used_bytes": 4096.0, "cnic.tx.kv.busy_s": 0.0}
    for engine_id in (DE1, DE2):
        cluster.metrics.record(engine_id, busy, 100.0)
        cluster.metrics.record(engine_id, {**busy, "cnic.tx.kv.busy_s": 10.0}, 110.0)
    cluster.metrics.forget(DE1)
    cluster.books.engine_died(DE1)
    m = cluster.metrics_snapshot()
    assert m.buffer_bytes_in_use == {"node1": 0, "node2": 4096}
    assert [label for label, _ in m.nic_utilization] == ["de2.2/cnic.tx"]
    assert set(m.engine_tokens) == {"pe0.0", "de2.2"}  # the dead engine is gone at once
