"""Both ends of `dualpath bench transfer --testbed netns` (run inside the namespaces):

    python -m dualpath.bench.transfer_link sink   ADDR RAW_PORT ZMQ_PORT SECRET ROUNDS BYTES
    python -m dualpath.bench.transfer_link source ADDR RAW_PORT ZMQ_PORT SECRET ROUNDS BYTES MSG BIND

The source alternates a raw TCP round (`sendall` of BYTES, the sink answers one byte) and a
round through `ZmqTransport` with CURVE authentication and encryption (BYTES as MSG-byte
messages, the sink confirms with a Probe), and prints one JSON line of per-round rates.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

import numpy as np

from dualpath.core.secret import ClusterSecret
from dualpath.transfer.curve import ClusterKeys
from dualpath.transfer.zmq_transport import DataSecurity, ZmqTransport
from dualpath.wire.data import Probe

SINK_ENGINE, SOURCE_ENGINE = 1, 0


def _security(secret: str, engine: int) -> DataSecurity:
    keys = ClusterKeys(ClusterSecret.read(secret))
    return DataSecurity(keys, keys.engine(engine))


def sink(addr: str, raw_port: int, zmq_port: int, secret: str, rounds: int, total: int) -> None:
    def raw() -> None:
        buf = memoryview(bytearray(1 << 20))
        with socket.create_server((addr, raw_port)) as server:
            for _ in range(rounds):
                conn, _ = server.accept()
                with conn:
                    got = 0
                    while got < total:
                        n = conn.recv_into(buf)
                        if n == 0:
                            return
                        got += n
                    conn.sendall(b"k")

    thread = threading.Thread(target=raw, daemon=True)
    thread.start()
    with ZmqTransport(f"tcp://{addr}:{zmq_port}", security=_security(secret, SINK_ENGINE)) as t:
        print("ready", flush=True)
        for _ in range(rounds):
            got, sender = 0, ""
            while got < total:
                msg = t.recv(timeout_s=600)
                if msg is None:
                    return
                got += msg.nbytes
                sender = msg.sender
            t.send(sender, Probe(seq=got))
        time.sleep(0.5)
    thread.join(timeout=30)


def source(addr: str, raw_port: int, zmq_port: int, secret: str, rounds: int, total: int,
           message: int, bind: str) -> None:
    payload = np.random.default_rng(0).integers(0, 256, size=message, dtype=np.uint8)
    count = total // message
    raw = memoryview(np.zeros(total, np.uint8).data)
    raw_rates, zmq_rates = [], []
    with ZmqTransport(f"tcp://{bind}:0", security=_security(secret, SOURCE_ENGINE)) as t:
        for _ in range(rounds):
            with socket.create_connection((addr, raw_port), timeout=600) as s:
                start = time.perf_counter()
                s.sendall(raw)
                if s.recv(1) != b"k":
                    raise RuntimeError("the raw sink did not confirm")
                raw_rates.append(total / (time.perf_counter() - start))
            start = time.perf_counter()
            for i in range(count):
                t.send(f"tcp://{addr}:{zmq_port}", Probe(seq=i), [payload])
            done = t.recv(timeout_s=600)
            if done is None or not isinstance(done.header, Probe):
                raise RuntimeError("the transport sink did not confirm")
            zmq_rates.append(count * message / (time.perf_counter() - start))
    print(json.dumps({"raw_bytes_s": raw_rates, "transport_bytes_s": zmq_rates}), flush=True)


def main() -> int:
    role, addr, raw_port, zmq_port, secret, rounds, total = sys.argv[1:8]
    if role == "sink":
        sink(addr, int(raw_port), int(zmq_port), secret, int(rounds), int(total))
    else:
        source(addr, int(raw_port), int(zmq_port), secret, int(rounds), int(total),
               int(sys.argv[8]), sys.argv[9])
    return 0


if __name__ == "__main__":
    sys.exit(main())
