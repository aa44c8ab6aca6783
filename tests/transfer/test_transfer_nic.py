"""Emulated NICs: the configured rate holds under saturation (threads and processes), the
high-priority class keeps its latency under KV load, KV is work-conserving, stats add up.

Rates are modest (50-200 MB/s, chunks of 256 KiB = 1-5 ms) so a loaded 2-core machine
keeps up; the 10% tolerance is the one the issue asks for.
"""

from __future__ import annotations

import statistics
import threading
import time
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import pytest
from rates import assert_shaped_rate
from transfer_helpers import MB, MiB, saturate, saturate_child

from dualpath.core.errors import ConfigError
from dualpath.transfer.nic import Direction, EmulatedNic, NicSpec, TrafficClass


def _spec(tmp_path: Path, name: str, rate: float | None, **kw: Any) -> NicSpec:
    return NicSpec(name, str(tmp_path / f"{name}.nic"), rate, **kw)


@pytest.mark.parametrize("threads", [1, 4])
def test_rate_holds_with_threads(tmp_path: Path, threads: int) -> None:
    spec = _spec(tmp_path, "cnic", 100 * MB)
    transfers = 48 // threads  # 48 MiB in all: ~0.5 s
    start, end = saturate(spec, threads, transfers, MiB)
    measured = 48 * MiB / (end - start)
    assert_shaped_rate(measured, 100 * MB)
    stats = EmulatedNic(spec).stats().lanes["tx.kv"]
    assert stats.bytes == 48 * MiB
    assert stats.transfers == 48
    assert stats.busy_s == pytest.approx(48 * MiB / (100 * MB))
    assert stats.active_transfers == 0 and stats.queued_bytes == 0


def test_rate_holds_across_processes(tmp_path: Path, spawn: SpawnContext) -> None:
    """Three processes x two threads share one SNIC (one file): the node's rate holds."""
    spec = _spec(tmp_path, "snic", 100 * MB)
    procs, threads, transfers = 3, 2, 16  # 96 MiB: ~1 s
    barrier = spawn.Barrier(procs)
    results = spawn.Queue()
    children = [spawn.Process(target=saturate_child,
                              args=(spec, threads, transfers, MiB, barrier, results))
                for _ in range(procs)]
    for c in children:
        c.start()
    spans = [results.get(timeout=60) for _ in children]
    for c in children:
        c.join(timeout=30)
        assert c.exitcode == 0
    start = min(s for s, _ in spans)
    end = max(e for _, e in spans)
    total = procs * threads * transfers * MiB
    assert_shaped_rate(total / (end - start), 100 * MB)
    assert EmulatedNic(spec).stats().lanes["tx.kv"].bytes == total


def _high_latency_p50(nic: EmulatedNic, samples: int, nbytes: int, gap_s: float) -> float:
    latencies = []
    for _ in range(samples):
        t0 = time.monotonic()
        nic.transmit(nbytes, TrafficClass.MODEL)
        latencies.append(time.monotonic() - t0)
        time.sleep(gap_s)
    return statistics.median(latencies)


def _high_latency_under_kv_load(tmp_path: Path, isolation: bool) -> tuple[float, float, int]:
    """(unloaded p50, loaded p50, KV bytes moved meanwhile) for 1 MiB high messages."""
    spec = _spec(tmp_path, f"cnic-{isolation}", 100 * MB, isolation=isolation)
    nic = EmulatedNic(spec)
    gap_s = 2 * spec.burst_s  # idle gaps longer than the GCRA tolerance: no credit
    unloaded = _high_latency_p50(nic, 5, MiB, gap_s)
    stop = threading.Event()

    def kv() -> None:
        while not stop.is_set():
            nic.transmit(4 * MiB, TrafficClass.KV)

    workers = [threading.Thread(target=kv) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.05)
        before = nic.stats().lanes["tx.kv"].bytes
        loaded = _high_latency_p50(nic, 15, MiB, gap_s)
        kv_bytes = nic.stats().lanes["tx.kv"].bytes - before
    finally:
        stop.set()
        for w in workers:
            w.join()
    return unloaded, loaded, kv_bytes


def test_high_priority_keeps_latency_while_kv_saturates(tmp_path: Path) -> None:
    unloaded, isolated, kv_bytes = _high_latency_under_kv_load(tmp_path, isolation=True)
    _, shared, _ = _high_latency_under_kv_load(tmp_path, isolation=False)
    transmit_s = MiB / (100 * MB)
    assert unloaded == pytest.approx(transmit_s, rel=0.25)
    # With isolation a high message waits behind at most ~one 256 KiB KV chunk (2.6 ms).
    assert isolated < 1.5 * unloaded
    # Without it, it shares the link with three KV flows: the test can fail.
    assert shared > 2.5 * unloaded
    assert kv_bytes > 0  # KV kept flowing in the gaps (work-conserving)


def test_kv_alone_gets_full_rate_and_is_not_starved(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "cnic", 200 * MB)
    start, end = saturate(spec, 1, 40, MiB)
    assert_shaped_rate(40 * MiB / (end - start), 200 * MB)

    # Saturating high traffic: KV still gets its weighted share (99:1), not more.
    nic = EmulatedNic(spec)
    stop = threading.Event()

    def high() -> None:
        while not stop.is_set():
            nic.transmit(MiB, TrafficClass.MODEL)

    kv_done = threading.Event()

    def kv() -> None:
        while not stop.is_set():
            nic.transmit(256 * 1024, TrafficClass.KV)
        kv_done.set()

    before = nic.stats().lanes
    workers = [threading.Thread(target=high) for _ in range(2)] + [threading.Thread(target=kv)]
    for w in workers:
        w.start()
    time.sleep(1.5)
    stop.set()
    for w in workers:
        w.join()
    after = nic.stats().lanes
    high_bytes = after["tx.model"].bytes - before["tx.model"].bytes
    kv_bytes = after["tx.kv"].bytes - before["tx.kv"].bytes
    share = kv_bytes / (high_bytes + kv_bytes)
    assert 0.002 < share < 0.05


def test_stats_show_the_queue_while_transfers_wait(tmp_path: Path) -> None:
    nic = EmulatedNic(_spec(tmp_path, "snic", 50 * MB))
    workers = [threading.Thread(target=nic.transmit, args=(5 * MiB, TrafficClass.KV, Direction.RX))
               for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(0.1)
    busy = nic.stats().lanes["rx.kv"]
    for w in workers:
        w.join()
    done = nic.stats().lanes["rx.kv"]
    assert busy.active_transfers == 3
    assert 0 < busy.queued_bytes < 15 * MiB
    assert done.active_transfers == 0 and done.queued_bytes == 0
    assert done.bytes == 15 * MiB and done.transfers == 3
    assert done.queue_wait_s > 0  # two of the three waited for the link
    assert nic.stats().lanes["tx.kv"].bytes == 0  # directions are independent
    flat = nic.stats().flat()
    assert flat["rx.kv.bytes"] == 15 * MiB
    nic.reset()
    assert nic.stats().flat()["rx.kv.bytes"] == 0


def test_unlimited_nic_counts_bytes_without_pacing(tmp_path: Path) -> None:
    nic = EmulatedNic(_spec(tmp_path, "oracle", None))
    slot = nic.transmit(10 * 1024 * MiB, TrafficClass.KV)  # 10 GiB: would take forever if paced
    assert slot.end_s == slot.start_s
    lane = nic.stats().lanes["tx.kv"]
    assert lane.bytes == 10 * 1024 * MiB and lane.busy_s == 0.0


def test_bad_specs_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        _spec(tmp_path, "x", 0.0)
    with pytest.raises(ConfigError):
        _spec(tmp_path, "x", 1e6, chunk_bytes=0)
