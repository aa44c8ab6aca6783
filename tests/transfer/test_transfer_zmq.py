"""The zmq/TCP transport: multi-frame zero-copy round trip between processes, errors, shutdown,
and CNIC pacing on both ends; the in-process LocalTransport behaves the same."""

from __future__ import annotations

import threading
import time
from multiprocessing.context import SpawnContext
from pathlib import Path

import numpy as np
import pytest
from local_transport import LocalHub, LocalTransport
from rates import assert_shaped_rate
from transfer_helpers import MB, MiB, echo_child, random_payload

from dualpath.core.errors import TransferError
from dualpath.transfer.nic import EmulatedNic, NicSpec, TrafficClass
from dualpath.transfer.zmq_transport import ZmqTransport
from dualpath.wire.data import Probe


def test_multi_frame_round_trip_between_processes(spawn: SpawnContext) -> None:
    rng = np.random.default_rng(7)
    rounds = 3
    ready = spawn.Queue()
    child = spawn.Process(target=echo_child, args=(ready, rounds))
    child.start()
    try:
        peer = ready.get(timeout=60)
        with ZmqTransport() as transport:
            for i in range(rounds):
                payload = random_payload(rng)
                klass = TrafficClass.MODEL if i % 2 else TrafficClass.KV
                transport.send(peer, Probe(seq=i), payload, traffic_class=klass)
                reply = transport.recv(timeout_s=30)
                assert reply is not None
                assert reply.sender == peer
                assert reply.traffic_class == klass
                assert reply.header == Probe(seq=i)
                *echoed, owndata = reply.payload
                assert reply.nbytes == sum(a.nbytes for a in payload) + owndata.nbytes
                for got, sent in zip(echoed, payload, strict=True):
                    assert got.dtype == sent.dtype and got.shape == sent.shape
                    np.testing.assert_array_equal(got, sent)
                    # Zero copy on receive: views over the zmq frames, writable.
                    assert not got.flags.owndata and got.flags.writeable
                assert owndata.tolist() == [0] * len(payload)
    finally:
        child.join(timeout=30)
    assert child.exitcode == 0


def test_non_contiguous_arrays_and_raw_buffers_are_sent(tmp_path: Path) -> None:
    with ZmqTransport() as a, ZmqTransport() as b:
        base = np.arange(64, dtype=np.uint8).reshape(8, 8)
        a.send(b.address, Probe(), [base[:, ::2], b"raw", memoryview(bytearray(b"xy"))])
        m = b.recv(timeout_s=10)
        assert m is not None
        np.testing.assert_array_equal(m.payload[0], base[:, ::2])
        assert m.payload[1].tobytes() == b"raw" and m.payload[2].tobytes() == b"xy"


def test_unreachable_peer_is_a_transfer_error_within_the_timeout() -> None:
    with ZmqTransport() as a:
        t0 = time.monotonic()
        with pytest.raises(TransferError, match="unreachable"):
            a.send("tcp://127.0.0.1:9", Probe(), [np.zeros(10, np.uint8)], timeout_s=0.3)
        assert time.monotonic() - t0 < 5.0
        with pytest.raises(TransferError, match="bad destination"):
            a.send("nonsense", Probe(), [])
        with pytest.raises(TransferError, match="cannot be encoded"):
            a.send(a.address, object(), [])  # type: ignore[arg-type]


def test_bind_conflict_and_closed_use_are_transfer_errors() -> None:
    with ZmqTransport() as a, pytest.raises(TransferError, match="cannot bind"):
        ZmqTransport(a.address)
    with pytest.raises(TransferError, match="closed"):
        a.send(a.address, Probe(), [])


def test_close_stops_every_thread(tmp_path: Path) -> None:
    before = threading.active_count()
    nic = EmulatedNic(NicSpec("c", str(tmp_path / "c.nic"), 100 * MB))
    transports = [ZmqTransport(cnic=nic) for _ in range(3)]
    transports[0].send(transports[1].address, Probe(), [np.ones(10, np.uint8)])
    assert transports[1].recv(timeout_s=10) is not None
    for t in transports:
        t.close()
        t.close()  # idempotent
    assert threading.active_count() == before


def test_paced_transport_holds_the_cnic_rate_and_counts_both_ends(tmp_path: Path) -> None:
    """Two sender threads saturate the sender's CNIC; both ends see every byte."""
    tx_nic = EmulatedNic(NicSpec("pe", str(tmp_path / "pe.nic"), 100 * MB))
    rx_nic = EmulatedNic(NicSpec("de", str(tmp_path / "de.nic"), 100 * MB))
    block = np.zeros(2 * MiB, np.uint8)
    per_thread = 12
    with ZmqTransport(cnic=tx_nic) as a, ZmqTransport(cnic=rx_nic) as b:
        t0 = time.monotonic()

        def sender() -> None:
            for i in range(per_thread):
                a.send(b.address, Probe(seq=i), [block])

        threads = [threading.Thread(target=sender) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(2 * per_thread):
            assert b.recv(timeout_s=30) is not None
        elapsed = time.monotonic() - t0
        for t in threads:
            t.join()
    total = 2 * per_thread * block.nbytes
    assert_shaped_rate(total / elapsed, 100 * MB)
    assert tx_nic.stats().lanes["tx.kv"].bytes == total
    assert rx_nic.stats().lanes["rx.kv"].bytes == total


def test_local_transport_delivers_and_paces(tmp_path: Path) -> None:
    hub = LocalHub()
    nic = EmulatedNic(NicSpec("c", str(tmp_path / "c.nic"), None))
    with LocalTransport(hub, "pe0", cnic=nic) as a, LocalTransport(hub) as b:
        assert a.address == "local://pe0"
        layer = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
        a.send(b.address, Probe(seq=0), [layer], traffic_class=TrafficClass.MODEL)
        m = b.recv(timeout_s=5)
        assert m is not None and m.sender == "local://pe0" and m.header == Probe(seq=0)
        np.testing.assert_array_equal(m.payload[0], layer)
        assert nic.stats().lanes["tx.model"].bytes == 12
        assert b.recv(timeout_s=0.01) is None
        with pytest.raises(TransferError, match="unreachable"):
            a.send("local://nobody", Probe(), [])
        with pytest.raises(TransferError, match="in use"):
            LocalTransport(hub, "pe0")


def test_incast_is_limited_by_the_receivers_cnic(tmp_path: Path) -> None:
    """Two engines each sending at their full 100 MB/s into one engine whose CNIC also runs
    at 100 MB/s: the receiver's RX lane, not the senders, sets the aggregate rate."""
    rx_nic = EmulatedNic(NicSpec("pe", str(tmp_path / "pe.nic"), 100 * MB))
    senders = [ZmqTransport(cnic=EmulatedNic(NicSpec(f"de{i}", str(tmp_path / f"de{i}.nic"), 100 * MB)))
               for i in range(2)]
    block = np.zeros(2 * MiB, np.uint8)
    per_sender = 12
    with ZmqTransport(cnic=rx_nic) as receiver:
        t0 = time.monotonic()

        def send_all(t: ZmqTransport) -> None:
            for i in range(per_sender):
                t.send(receiver.address, Probe(seq=i), [block])

        threads = [threading.Thread(target=send_all, args=(s,)) for s in senders]
        for t in threads:
            t.start()
        for _ in range(2 * per_sender):
            assert receiver.recv(timeout_s=30) is not None
        elapsed = time.monotonic() - t0
        for t in threads:
            t.join()
    for s in senders:
        s.close()
    total = 2 * per_sender * block.nbytes
    assert_shaped_rate(total / elapsed, 100 * MB)
    assert rx_nic.stats().lanes["rx.kv"].bytes == total
