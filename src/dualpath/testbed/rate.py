"""What a shaped link delivers: one bulk TCP stream between two hosts, measured three ways.

- goodput: payload bytes/s at the receiver, from byte `warmup_bytes` (past slow start) to
  the last byte;
- the shapers' wire bytes (HTB counts every segment with its headers, which is what the rate
  limits): bytes/s through the sender's TX and the receiver's RX link classes;
- the kernel interface counters of both ends over the whole transfer.

The payload over the shaped rate is at most 1448/1514 ≈ 0.956 with 1500-byte frames (TCP
with timestamps); the wire rate is the one to compare with the configured rate.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dualpath.core.errors import ConfigError
from dualpath.testbed.commands import TestbedError
from dualpath.testbed.host import Direction, Host, IfCounters
from dualpath.testbed.shaping import TOS_KV, KernelClass, classify_tos
from dualpath.testbed.spec import Network

# traffic.py is run as a plain script (stdlib only, no site): a helper starts in ~30 ms
# instead of the ~200 ms of importing the dualpath.testbed package first.
TRAFFIC = [sys.executable, "-S", str(Path(__file__).with_name("traffic.py"))]


def traffic_argv(*args: str, realtime: bool = False, cpu: int | None = None) -> list[str]:
    """argv of a traffic.py program; `realtime` starts it under SCHED_FIFO already (with
    util-linux `chrt` when installed; the program asks for it itself too), so that on a loaded
    machine it does not spend seconds in the run queue before it even starts."""
    pin = [] if cpu is None else ["--cpu", str(cpu)]
    if not realtime:
        return [*TRAFFIC, *args, *pin]
    prefix = ["chrt", "-f", "10"] if shutil.which("chrt") else []
    return [*prefix, *TRAFFIC, *args, *pin, "--realtime"]


@dataclass(frozen=True)
class RateResult:
    payload_bytes: int
    goodput_bytes_s: float
    tx_wire_bytes: int  # the sender's TX link class
    rx_wire_bytes: int  # the receiver's RX link class
    tx_class_bytes: int  # of those, in the class the TOS selects (== tx_wire on a SNIC)
    rx_class_bytes: int
    tx_class: KernelClass | None  # the class that carried most bytes (None: no classes)
    rx_class: KernelClass | None
    sender_counters: IfCounters  # delta over the transfer
    receiver_counters: IfCounters

    @property
    def wire_over_payload(self) -> float:
        """Wire bytes (headers included, as the shaped end counts them) per payload byte."""
        return max(self.tx_wire_bytes, self.rx_wire_bytes) / self.payload_bytes


def _shaper_bytes(host: Host, network: Network, direction: Direction) -> dict[str, int]:
    """Link-class bytes ("link") and, on a CNIC, per class; empty when unshaped."""
    if host.spec.rate_bytes_s(network) is None:
        return {}
    counters = host.shaper_counters(network, direction)
    out = {"link": counters.link.sent_bytes}
    for cls in KernelClass:
        found = counters.model if cls is KernelClass.MODEL else counters.kv
        if found is not None:
            out[cls.name] = found.sent_bytes
    return out


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def _busiest(delta: dict[str, int]) -> KernelClass | None:
    classes = {cls: delta[cls.name] for cls in KernelClass if cls.name in delta}
    return max(classes, key=lambda c: classes[c]) if classes else None


def measure_rate(sender: Host, receiver: Host, network: Network = Network.COMPUTE, *,
                 payload_bytes: int = 25_000_000, warmup_bytes: int = 2_000_000,
                 tos: int = TOS_KV, port: int = 5301, timeout_s: float = 120.0,
                 realtime: bool = True) -> RateResult:
    """Send `payload_bytes` from `sender` to `receiver` over `network` and measure it
    (`realtime`: sender and sink under SCHED_FIFO, so CPU load does not throttle the stream)."""
    if payload_bytes <= warmup_bytes:
        raise ConfigError("payload_bytes must exceed warmup_bytes")
    addr = receiver.address(network)
    tx0 = _shaper_bytes(sender, network, Direction.TX)
    rx0 = _shaper_bytes(receiver, network, Direction.RX)
    s0, r0 = sender.counters()[network], receiver.counters()[network]
    sink = receiver.popen(traffic_argv("sink", "--port", str(port), "--warmup-bytes",
                                       str(warmup_bytes), realtime=realtime),
                          stdout=subprocess.PIPE, text=True)
    try:
        sender.run(traffic_argv("blast", "--to", f"{addr}:{port}", "--tos", str(tos),
                                "--bytes", str(payload_bytes), realtime=realtime),
                   timeout_s=timeout_s)
        out, _ = sink.communicate(timeout=timeout_s)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    if sink.returncode != 0 or not out.strip():
        raise TestbedError(f"sink on {receiver.name} failed (exit {sink.returncode})")
    got = json.loads(out.strip().splitlines()[-1])
    if got["bytes"] != payload_bytes or got["warm_s"] is None or got["last_s"] <= got["warm_s"]:
        raise TestbedError(f"sink got {got['bytes']} of {payload_bytes} bytes")
    goodput = (got["bytes"] - got["warm_bytes"]) / (got["last_s"] - got["warm_s"])
    tx = _delta(_shaper_bytes(sender, network, Direction.TX), tx0)
    rx = _delta(_shaper_bytes(receiver, network, Direction.RX), rx0)
    chosen = classify_tos(tos).name if network is Network.COMPUTE else "link"
    return RateResult(
        payload_bytes=payload_bytes, goodput_bytes_s=goodput,
        tx_wire_bytes=tx.get("link", 0), rx_wire_bytes=rx.get("link", 0),
        tx_class_bytes=tx.get(chosen, 0), rx_class_bytes=rx.get(chosen, 0),
        tx_class=_busiest(tx), rx_class=_busiest(rx),
        sender_counters=sender.counters()[network] - s0,
        receiver_counters=receiver.counters()[network] - r0)

