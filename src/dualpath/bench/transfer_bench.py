"""`dualpath bench transfer`: engine-to-engine bytes/s through the transfer layer vs raw TCP.

Two processes on 127.0.0.1. Each round streams `--bytes` as `--message-bytes` messages of
`--frames` payload frames from this process to a sink process, once through `ZmqTransport`
(both ends with an unlimited emulated CNIC, so the byte accounting is included) and once as
a raw loopback TCP stream (`sendall` / `recv_into` into a preallocated buffer) of the same
bytes (and with `--mooncake`, through `MooncakeTransport` too); rounds alternate, and the efficiency is the median over rounds of the ratio of each
transport round to the raw round just before it (adjacent rounds see the same machine load,
which matters on a shared 2-core box). A last phase paces the sender's CNIC
at `--shaped-rate` with `--shaped-threads` sender threads and reports measured/configured.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dualpath.bench.report import format_table, machine_info
from dualpath.core.errors import UserInputError
from dualpath.core.units import parse_bandwidth, parse_bytes
from dualpath.transfer.nic import EmulatedNic, NicSpec, TrafficClass
from dualpath.wire.data import Probe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bytes", default="1GiB", help="bytes per round (default 1GiB)")
    parser.add_argument("--message-bytes", default="4MiB", help="bytes per message (default 4MiB)")
    parser.add_argument("--frames", type=int, default=4, help="payload frames per message (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of each kind (default 5)")
    parser.add_argument("--shaped-rate", default="200MB/s",
                        help="CNIC rate of the shaped-accuracy phase (default 200MB/s)")
    parser.add_argument("--shaped-bytes", default="200MB",
                        help="bytes sent in the shaped-accuracy phase (default 200MB)")
    parser.add_argument("--shaped-threads", type=int, default=2,
                        help="sender threads in the shaped-accuracy phase (default 2)")
    parser.add_argument("--mooncake", action="store_true",
                        help="also measure MooncakeTransport (TCP protocol); needs mooncake installed")
    parser.add_argument("--testbed", choices=["local", "netns"], default="local",
                        help="netns: between two network namespaces over a kernel-shaped link, "
                             "CURVE on, vs a raw socket on the same link (root)")
    parser.add_argument("--link-rate", default="50MB/s",
                        help="--testbed netns: the compute link's HTB rate (50MB/s)")
    parser.add_argument("--netns-bytes", default="100MB",
                        help="--testbed netns: bytes per round (100MB)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "testbed", "local") == "netns":
        from dualpath.bench import transfer_netns

        return transfer_netns.run(args)
    total = parse_bytes(args.bytes)
    message = parse_bytes(args.message_bytes)
    shaped_rate = parse_bandwidth(args.shaped_rate)
    shaped_total = parse_bytes(args.shaped_bytes)
    if message <= 0 or total < message or args.frames < 1 or message % args.frames:
        raise UserInputError("need --bytes >= --message-bytes > 0 and --frames dividing --message-bytes")
    if args.repeats < 1 or args.shaped_threads < 1:
        raise UserInputError("--repeats and --shaped-threads must be >= 1")
    if shaped_rate is None:
        raise UserInputError("--shaped-rate must be a finite rate")
    messages = total // message
    total = messages * message
    shaped_messages = max(args.shaped_threads, shaped_total // message)
    shaped_total = shaped_messages * message
    frame = message // args.frames
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=frame, dtype=np.uint8) for _ in range(args.frames)]
    raw_buffer = np.concatenate(frames)

    if args.mooncake:
        from dualpath.transfer.mooncake_transport import mooncake_available

        if not mooncake_available():
            raise UserInputError("--mooncake: install mooncake-transfer-engine-non-cuda and libibverbs1")

    ctx = mp.get_context("spawn")
    ready: Any = ctx.Queue()
    rounds = [total] * args.repeats + [shaped_total]
    sinks = [ctx.Process(target=_transport_sink, args=(ready, "zmq", rounds), daemon=True),
             ctx.Process(target=_raw_sink, args=(ready, total, message, args.repeats), daemon=True)]
    if args.mooncake:
        sinks.append(ctx.Process(target=_transport_sink,
                                 args=(ready, "mooncake", [total] * args.repeats), daemon=True))
    for sink in sinks:
        sink.start()
    where = dict(ready.get(timeout=120) for _ in sinks)

    from dualpath.transfer.zmq_transport import ZmqTransport

    raw_rates: list[float] = []
    zmq_rates: list[float] = []
    mooncake_rates: list[float] = []
    with tempfile.TemporaryDirectory(prefix="dualpath-bench-") as tmp:
        unlimited = EmulatedNic(NicSpec("bench-cnic", str(Path(tmp) / "free.nic"), None))
        shaped = EmulatedNic(NicSpec("bench-shaped", str(Path(tmp) / "shaped.nic"), shaped_rate))
        with ZmqTransport(cnic=unlimited) as free_tx, ZmqTransport(cnic=shaped) as shaped_tx:
            mooncake_tx = _mooncake_transport(unlimited) if args.mooncake else None
            kinds = 3 if args.mooncake else 2
            progress = tqdm(total=kinds * args.repeats + 1, desc="transfer bench", file=sys.stderr)
            for _ in range(args.repeats):
                raw_rates.append(total / _raw_round(where["raw"], raw_buffer, messages))
                progress.update()
                zmq_rates.append(total / _transport_round(free_tx, where["zmq"], frames, [messages]))
                progress.update()
                if mooncake_tx is not None:
                    mooncake_rates.append(
                        total / _transport_round(mooncake_tx, where["mooncake"], frames, [messages]))
                    progress.update()
            per_thread = [shaped_messages // args.shaped_threads] * args.shaped_threads
            per_thread[0] += shaped_messages - sum(per_thread)
            shaped_elapsed = _transport_round(shaped_tx, where["zmq"], frames, per_thread)
            progress.update()
            progress.close()
            shaped_stats = shaped.stats().lanes["tx.kv"]
            if mooncake_tx is not None:
                mooncake_tx.close()
    for sink in sinks:
        sink.join(timeout=30)

    raw = statistics.median(raw_rates)
    via_zmq = statistics.median(zmq_rates)
    ratios = [z / r for z, r in zip(zmq_rates, raw_rates, strict=True)]
    efficiency = statistics.median(ratios)
    shaped_measured = shaped_total / shaped_elapsed
    result = {
        "bytes_per_round": total,
        "message_bytes": message,
        "frames_per_message": args.frames,
        "repeats": args.repeats,
        "transport_bytes_s": via_zmq,
        "raw_socket_bytes_s": raw,
        "efficiency_vs_raw_socket": efficiency,
        "efficiency_vs_raw_socket_rounds": ratios,
        "transport_bytes_s_rounds": zmq_rates,
        "raw_socket_bytes_s_rounds": raw_rates,
        "shaped_rate_configured_bytes_s": shaped_rate,
        "shaped_rate_measured_bytes_s": shaped_measured,
        "shaped_rate_accuracy": shaped_measured / shaped_rate,
        "shaped_threads": args.shaped_threads,
        "shaped_bytes": shaped_total,
        "shaped_nic_busy_s": shaped_stats.busy_s,
        "machine": machine_info(),
    }
    rows = [["raw TCP socket", raw, 1.0],
            ["ZmqTransport (unlimited CNIC)", via_zmq, via_zmq / raw],
            [f"ZmqTransport shaped at {shaped_rate:.4g} B/s", shaped_measured, shaped_measured / raw]]
    if mooncake_rates:
        via_mc = statistics.median(mooncake_rates)
        mc_ratios = [m / r for m, r in zip(mooncake_rates, raw_rates, strict=True)]
        result["mooncake_bytes_s"] = via_mc
        result["mooncake_bytes_s_rounds"] = mooncake_rates
        result["mooncake_efficiency_vs_raw_socket"] = statistics.median(mc_ratios)
        rows.insert(2, ["MooncakeTransport (tcp protocol)", via_mc, via_mc / raw])
    print(format_table(["path", "bytes/s", "vs raw"], rows))
    print(f"efficiency_vs_raw_socket = {efficiency:.3f} (median of paired rounds); "
          f"shaped_rate_accuracy = {shaped_measured / shaped_rate:.3f}")
    return result


def _mooncake_transport(cnic: EmulatedNic) -> Any:
    from dualpath.transfer.mooncake_transport import MooncakeTransport

    return MooncakeTransport(cnic=cnic)


def _transport_round(transport: Any, dest: str, frames: list[np.ndarray], per_thread: list[int]) -> float:
    """Send per_thread[i] messages from thread i; seconds until the sink confirmed all."""
    def sender(count: int) -> None:
        for i in range(count):
            transport.send(dest, Probe(seq=i), frames, traffic_class=TrafficClass.KV)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=sender, args=(n,)) for n in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = transport.recv(timeout_s=600)
    if done is None or not isinstance(done.header, Probe):
        raise RuntimeError("transfer bench: the sink did not confirm the round")
    return time.perf_counter() - t0


def _raw_round(port: int, buffer: np.ndarray, messages: int) -> float:
    view = memoryview(buffer.data)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        t0 = time.perf_counter()
        for _ in range(messages):
            sock.sendall(view)
        if sock.recv(1) != b"k":
            raise RuntimeError("transfer bench: the raw sink did not confirm the round")
        return time.perf_counter() - t0


def _transport_sink(ready: Any, backend: str, rounds: list[int]) -> None:
    from dualpath.transfer.base import Transport
    from dualpath.transfer.zmq_transport import ZmqTransport

    with tempfile.TemporaryDirectory(prefix="dualpath-sink-") as tmp:
        nic = EmulatedNic(NicSpec("sink-cnic", str(Path(tmp) / "sink.nic"), None))
        transport: Transport = (ZmqTransport(cnic=nic) if backend == "zmq"
                                else _mooncake_transport(nic))
        with transport:
            ready.put((backend, transport.address))
            for expected in rounds:
                received = 0
                sender = ""
                while received < expected:
                    message = transport.recv(timeout_s=600)
                    if message is None:
                        return
                    received += message.nbytes
                    sender = message.sender
                transport.send(sender, Probe(seq=received))  # the round's confirmation
            time.sleep(0.5)  # let the last confirmation leave


def _raw_sink(ready: Any, total: int, message: int, rounds: int) -> None:
    buffer = bytearray(message)
    view = memoryview(buffer)
    with socket.create_server(("127.0.0.1", 0)) as server:
        ready.put(("raw", server.getsockname()[1]))
        for _ in range(rounds):
            conn, _ = server.accept()
            with conn:
                received = 0
                while received < total:
                    # Fill one message-sized buffer over and over (total is a multiple).
                    n = conn.recv_into(view[received % message:])
                    if n == 0:
                        return
                    received += n
                conn.sendall(b"k")
