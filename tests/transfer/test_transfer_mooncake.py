"""The optional Mooncake backend (skipped where `mooncake` or libibverbs is missing)."""

from __future__ import annotations

import gc
from multiprocessing.context import SpawnContext
from pathlib import Path

import numpy as np
import pytest
from transfer_helpers import MB, MiB, mooncake_echo_child, random_payload

from dualpath.core.errors import TransferError
from dualpath.transfer.arena import Arena
from dualpath.transfer.mooncake_transport import mooncake_available
from dualpath.transfer.nic import EmulatedNic, NicSpec, TrafficClass
from dualpath.wire.data import Probe

needs_mooncake = pytest.mark.skipif(
    not mooncake_available(),
    reason="pip install mooncake-transfer-engine-non-cuda and apt-get install libibverbs1")


def test_arena_first_fit_and_coalescing() -> None:
    arena = Arena(1024)
    a, b, c = arena.alloc(128), arena.alloc(256), arena.alloc(640)
    assert (a, b, c) == (0, 128, 384) and arena.alloc(64) is None
    arena.free(128, 256)
    assert arena.alloc(512) is None and arena.alloc(192) == 128
    arena.free(128, 192)
    arena.free(0, 128)
    arena.free(384, 640)
    assert arena.free_bytes() == 1024 and arena.alloc(1024) == 0


@needs_mooncake
def test_round_trip_between_processes(spawn: SpawnContext) -> None:
    from dualpath.transfer.mooncake_transport import MooncakeTransport

    rng = np.random.default_rng(3)
    ready = spawn.Queue()
    child = spawn.Process(target=mooncake_echo_child, args=(ready, 2))
    child.start()
    try:
        peer = ready.get(timeout=60)
        with MooncakeTransport(arena_bytes=32 * MiB) as transport:
            for i, klass in enumerate([TrafficClass.KV, TrafficClass.MODEL]):
                payload = random_payload(rng)
                transport.send(peer, Probe(seq=i), payload, traffic_class=klass)
                reply = transport.recv(timeout_s=30)
                assert reply is not None and reply.sender == peer
                assert reply.header == Probe(seq=i) and reply.traffic_class == klass
                *echoed, owndata = reply.payload
                for got, sent in zip(echoed, payload, strict=True):
                    assert got.dtype == sent.dtype and got.shape == sent.shape
                    np.testing.assert_array_equal(got, sent)
                # Non-empty arrays are views into the receive arena (no copy).
                assert owndata.tolist()[:3] == [0, 0, 0]
    finally:
        child.join(timeout=30)
    assert child.exitcode == 0


@needs_mooncake
def test_arena_space_returns_when_messages_are_dropped(tmp_path: Path) -> None:
    from dualpath.transfer.mooncake_transport import MooncakeTransport

    nic = EmulatedNic(NicSpec("c", str(tmp_path / "c.nic"), 200 * MB))
    block = np.full(6 * MiB, 5, np.uint8)
    with MooncakeTransport(cnic=nic, arena_bytes=16 * MiB) as a, \
            MooncakeTransport(arena_bytes=16 * MiB) as b:
        held = []
        for _ in range(2):
            a.send(b.address, Probe(), [block])
            m = b.recv(timeout_s=10)
            assert m is not None
            held.append(m)
        with pytest.raises(TransferError, match="no room"):
            a.send(b.address, Probe(), [block], timeout_s=0.3)
        held.clear()
        gc.collect()
        for _ in range(4):  # 24 MiB through a 16 MiB arena
            a.send(b.address, Probe(), [block])
            m = b.recv(timeout_s=10)
            assert m is not None and int(m.payload[0][-1]) == 5
            del m
        assert nic.stats().lanes["tx.kv"].bytes == 6 * block.nbytes  # the refused one never left


@needs_mooncake
def test_unreachable_peer_is_a_transfer_error() -> None:
    from dualpath.transfer.mooncake_transport import MooncakeTransport

    with MooncakeTransport(arena_bytes=MiB) as a, pytest.raises(TransferError):
        a.send("tcp://127.0.0.1:9", Probe(), [np.zeros(10, np.uint8)], timeout_s=0.3)
