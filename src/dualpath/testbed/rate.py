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
import subprocess
import sys
from dataclasses import dataclass

from dualpath.core.errors import ConfigError
from dualpath.testbed.commands import TestbedError
from dualpath.testbed.host import Direction, Host, IfCounters
from dualpath.testbed.shaping import TOS_KV, classify_tos
from dualpath.testbed.spec import Network

TRAFFIC = [sys.executable, "-m", "dualpath.testbed.traffic"]


@dataclass(frozen=True)
class RateResult:
    payload_bytes: int
    goodput_bytes_s: float
    tx_wire_bytes: int  # the sender's TX link class
    rx_wire_bytes: int  # the receiver's RX link class
    tx_class_bytes: int  # of those, in the class the TOS selects (== tx_wire on a SNIC)
    rx_class_bytes: int
    sender_counters: IfCounters  # delta over the transfer
    receiver_counters: IfCounters

    @property
    def wire_over_payload(self) -> float:
        return self.tx_wire_bytes / self.payload_bytes


def _class_bytes(host: Host, network: Network, direction: Direction, tos: int) -> tuple[int, int]:
    if host.spec.rate_bytes_s(network) is None:
        return 0, 0
    counters = host.shaper_counters(network, direction)
    if network is Network.STORAGE:
        return counters.link.sent_bytes, counters.link.sent_bytes
    return counters.link.sent_bytes, counters.of(classify_tos(tos)).sent_bytes


def measure_rate(sender: Host, receiver: Host, network: Network = Network.COMPUTE, *,
                 payload_bytes: int = 25_000_000, warmup_bytes: int = 2_000_000,
                 tos: int = TOS_KV, port: int = 5301, timeout_s: float = 120.0) -> RateResult:
    """Send `payload_bytes` from `sender` to `receiver` over `network` and measure it."""
    if payload_bytes <= warmup_bytes:
        raise ConfigError("payload_bytes must exceed warmup_bytes")
    addr = receiver.address(network)
    tx0, txc0 = _class_bytes(sender, network, Direction.TX, tos)
    rx0, rxc0 = _class_bytes(receiver, network, Direction.RX, tos)
    s0, r0 = sender.counters()[network], receiver.counters()[network]
    sink = receiver.popen([*TRAFFIC, "sink", "--port", str(port), "--warmup-bytes",
                           str(warmup_bytes)], stdout=subprocess.PIPE, text=True)
    try:
        sender.run([*TRAFFIC, "blast", "--to", f"{addr}:{port}", "--tos", str(tos),
                    "--bytes", str(payload_bytes)], timeout_s=timeout_s)
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
    tx1, txc1 = _class_bytes(sender, network, Direction.TX, tos)
    rx1, rxc1 = _class_bytes(receiver, network, Direction.RX, tos)
    return RateResult(
        payload_bytes=payload_bytes, goodput_bytes_s=goodput,
        tx_wire_bytes=tx1 - tx0, rx_wire_bytes=rx1 - rx0,
        tx_class_bytes=txc1 - txc0, rx_class_bytes=rxc1 - rxc0,
        sender_counters=sender.counters()[network] - s0,
        receiver_counters=receiver.counters()[network] - r0)

