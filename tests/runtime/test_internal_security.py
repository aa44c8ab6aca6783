"""The internal plane of a real cluster refuses strangers and survives hostile bytes.

Every internal port (the scheduler's control port, every engine's data port) is probed with a
connection that has no CURVE keys, one keyed from another cluster's secret, one with a
member's key but the wrong identity, and raw random bytes; none of them gets a frame through,
the refusals are counted, every engine keeps serving, and the next requests succeed with the
same answers as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from pathlib import Path

import pytest
import zmq
from cluster_helpers import assert_idle, kv_capacity, run_request

from dualpath import wire
from dualpath.core.config import ClusterConfig
from dualpath.core.secret import ClusterSecret
from dualpath.runtime.cluster import LocalCluster
from dualpath.transfer.curve import ClusterKeys, Keypair, make_client
from dualpath.wire import control as ctl
from dualpath.wire.data import DataEnvelope, Probe
from dualpath.wire.types import AttemptId

pytestmark = pytest.mark.timeout(300)


def _config(tmp_path: Path) -> ClusterConfig:
    return ClusterConfig(model="tiny", store_path=str(tmp_path / "store"),
                         cluster_secret_path=str(tmp_path / "secret"),
                         decode_kv_bytes=32 << 20, pe_buffer_bytes=32 << 20,
                         de_buffer_bytes=32 << 20, engine_start_timeout_s=120)


def _probe(address: str, kind: int, identity: bytes | None, pair: Keypair | None = None,
           server_public: bytes | None = None) -> None:
    """Connect (with CURVE when `pair` is given) and send one frame that would matter if it
    got through: forged tokens for the control port, a data message for an engine."""
    ctx = zmq.Context()
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if pair is not None and server_public is not None:
        make_client(sock, pair, server_public)
    sock.connect(address)
    if kind == zmq.DEALER:
        frame = wire.encode(ctl.Tokens(1, AttemptId("victim", 1), [1, 2, 3]))
    else:
        frame = wire.encode(DataEnvelope("tcp://x:1", 1, Probe(seq=1), [], []))
    with contextlib.suppress(zmq.Again):
        sock.send(frame, zmq.NOBLOCK)
    time.sleep(0.5)
    ctx.destroy(0)


def _garbage(address: str, seed: int) -> None:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    rng = random.Random(seed)
    for size in (1, 10, 64, 4096, 100_000):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(bytes(rng.getrandbits(8) for _ in range(size)))
            s.settimeout(0.3)
            with contextlib.suppress(OSError):  # the peer may hang up: that is fine
                s.recv(100)


def test_internal_ports_refuse_strangers_and_survive_garbage(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = LocalCluster(_config(tmp_path))
        await cluster.start()
        try:
            capacity = kv_capacity(cluster)
            prompt = [(11 * i + 5) % 256 for i in range(150)]
            before = await run_request(cluster, "before", prompt)
            ours = ClusterKeys(ClusterSecret.read(tmp_path / "secret"))
            theirs = ClusterKeys(ClusterSecret.generate())
            control = cluster.control_address
            data_ports = [e.data_address for e in cluster.books.ledger.engines.values()]
            for i, address in enumerate([control, *data_ports]):
                kind = zmq.DEALER if address == control else zmq.PUSH
                identity = b"1" if kind == zmq.DEALER else None
                target = ours.control_server if address == control else ours.data_server
                other = theirs.control_server if address == control else theirs.data_server
                await asyncio.to_thread(_probe, address, kind, identity)  # no CURVE at all
                await asyncio.to_thread(_probe, address, kind, identity, theirs.engine(1),
                                        other.public)  # another cluster's keys
                # A member's key under another member's identity, and an id never handed out.
                await asyncio.to_thread(_probe, address, kind, b"2", ours.engine(1),
                                        target.public)
                await asyncio.to_thread(_probe, address, kind, b"9", ours.engine(9),
                                        target.public)
                await asyncio.to_thread(_garbage, address, i)
            rejected = cluster.metrics_snapshot().internal_frames_rejected
            assert rejected.get("handshake", 0) > 0, rejected  # no keys, another cluster's
            assert rejected.get("auth", 0) > 0, rejected  # an engine id nobody was given
            # Engine 1's key under engine 2's live routing id: the duplicate id is refused by
            # the ROUTER, so its forged tokens never arrive (no victim stream exists either).
            # A member's well-formed data message that no engine expects is dropped:
            assert rejected.get("unexpected", 0) > 0, rejected
            for engine_id in cluster.books.ledger.engines:  # every engine counted its share
                for _ in range(40):
                    c = cluster.counters()[engine_id]
                    if c.get("wire.rejected.handshake", 0) > 0:
                        break
                    await asyncio.sleep(0.25)
                assert c.get("wire.rejected.handshake", 0) > 0, (engine_id, c)
            assert all(e.alive for e in cluster.books.ledger.engines.values())
            assert cluster.is_ready(), cluster.readiness()
            after = await run_request(cluster, "after", prompt)
            again = await run_request(cluster, "again", prompt)
            assert before.tokens == after.tokens == again.tokens
            await assert_idle(cluster, capacity)
        finally:
            await cluster.shutdown()

    asyncio.run(main())


def test_the_secret_file_is_private_and_refused_when_it_is_not(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    secret = ClusterSecret.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert ClusterSecret.read(path) == secret
    assert "hidden" in repr(secret)
    path.chmod(0o644)
    with pytest.raises(Exception, match="readable by other users"):
        ClusterSecret.read(path)
