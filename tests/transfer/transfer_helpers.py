"""Child-process bodies and small helpers of the transfer tests (importable by spawn)."""

from __future__ import annotations

import threading
import time
from multiprocessing.synchronize import Barrier

import numpy as np

from dualpath.transfer.nic import EmulatedNic, NicSpec, TrafficClass

MB = 1_000_000
MiB = 1 << 20


def saturate(spec: NicSpec, threads: int, transfers: int, nbytes: int,
             barrier: Barrier | None = None) -> tuple[float, float]:
    """Transmit `transfers` x `nbytes` KV bytes from each of `threads` threads.

    Returns (first start, last end) in monotonic seconds.
    """
    nic = EmulatedNic(spec)
    if barrier is not None:
        barrier.wait()
    start = time.monotonic()

    def work() -> None:
        for _ in range(transfers):
            nic.transmit(nbytes, TrafficClass.KV)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    end = time.monotonic()
    nic.close()
    return start, end


def saturate_child(spec: NicSpec, threads: int, transfers: int, nbytes: int,
                   barrier: Barrier, results: object) -> None:
    results.put(saturate(spec, threads, transfers, nbytes, barrier))  # type: ignore[attr-defined]


def echo_child(ready: object, count: int) -> None:
    """Serve `count` messages: send each one back (same header, same arrays, plus a frame of
    per-array `owndata` flags) to its sender."""
    from dualpath.transfer.zmq_transport import ZmqTransport

    with ZmqTransport() as transport:
        ready.put(transport.address)  # type: ignore[attr-defined]
        for _ in range(count):
            message = transport.recv(timeout_s=30)
            if message is None:
                return
            # The reply carries one more frame: which received arrays owned their memory.
            owndata = np.array([a.flags.owndata for a in message.payload], dtype=np.uint8)
            transport.send(message.sender, message.header, [*message.payload, owndata],
                           traffic_class=message.traffic_class)
        time.sleep(0.2)  # let the last reply leave before the context closes


def random_payload(rng: np.random.Generator) -> list[np.ndarray]:
    """A Layer-Block-like multi-frame payload with a few odd shapes and dtypes."""
    return [
        rng.integers(0, 256, size=(1, 64, 1536), dtype=np.uint8),
        rng.integers(0, 256, size=(3 * MiB + 7,), dtype=np.uint8),
        rng.standard_normal((5, 3)).astype(np.float32),
        np.zeros((0,), dtype=np.uint8),
    ]


def mooncake_echo_child(ready: object, count: int) -> None:
    """Like echo_child, over MooncakeTransport."""
    from dualpath.transfer.mooncake_transport import MooncakeTransport

    with MooncakeTransport(arena_bytes=32 * MiB) as transport:
        ready.put(transport.address)  # type: ignore[attr-defined]
        for _ in range(count):
            message = transport.recv(timeout_s=30)
            if message is None:
                return
            # The reply carries one more frame: which received arrays owned their memory.
            owndata = np.array([a.flags.owndata for a in message.payload], dtype=np.uint8)
            transport.send(message.sender, message.header, [*message.payload, owndata],
                           traffic_class=message.traffic_class)
            del message
        time.sleep(0.2)
