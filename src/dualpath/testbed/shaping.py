"""The kernel shaping of one interface: the `tc` commands (HTB + u32 on DSCP) and the parsing of
`tc -s class show`. Pure (strings in, strings out), so it is tested without root.

Every shaped interface gets an HTB root qdisc with one link class `1:1` (rate = ceil = the NIC
rate). A storage interface (SNIC) has just that class. A compute interface (CNIC) has two
children, the paper's two InfiniBand virtual lanes:

    1:10  MODEL  prio 0  rate 99% of the link  ceil 100%   <- TOS 0xb8 (DSCP EF) and ARP
    1:20  KV     prio 1  rate  1% of the link  ceil 100%   <- TOS 0x20 (DSCP CS1), unmarked

Both may borrow up to the full link, so KV is work-conserving: it gets whatever MODEL leaves
idle, and MODEL, which never exceeds its own 99 % on its own, is dequeued first (HTB serves
classes under their rate before borrowers, lower prio first) and never waits behind the KV
backlog, which sits in KV's own leaf queue. ARP goes with MODEL so an address resolution
never waits behind a KV queue. Senders mark packets with `IP_TOS` (`zmq.TOS` on zmq sockets);
the mask 0xfc ignores the two ECN bits.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from dualpath.core.tos import TOS_KV, TOS_MODEL

MODEL_SHARE = 0.99  # the MODEL:KV weights, as the paper's 99:1 virtual-lane arbitration
_DSCP_MASK = 0xFC
_QUANTUM_BYTES = 60_000  # explicit: the r2q default makes tc warn at these rates
_MIN_BURST_BYTES = 64 * 1024  # one GSO super-packet (veth offloads TCP segmentation)
_BURST_S = 0.002


class KernelClass(enum.Enum):
    """A traffic class on a compute interface; the value is its HTB class id."""

    MODEL = "1:10"
    KV = "1:20"

    @property
    def tos(self) -> int:
        return TOS_MODEL if self is KernelClass.MODEL else TOS_KV


LINK_CLASS = "1:1"


def classify_tos(tos: int | None) -> KernelClass:
    """The class a packet with this TOS byte lands in (what the filters below do)."""
    if tos is not None and tos & _DSCP_MASK == TOS_MODEL:
        return KernelClass.MODEL
    return KernelClass.KV


def _bits(rate_bytes_s: float) -> str:
    return f"{max(8, round(rate_bytes_s * 8))}bit"


def _burst(rate_bytes_s: float) -> str:
    return f"{max(_MIN_BURST_BYTES, round(rate_bytes_s * _BURST_S))}b"


def tc_lines(dev: str, rate_bytes_s: float, *, two_classes: bool) -> list[str]:
    """`tc -batch` lines that shape the egress of `dev` to `rate_bytes_s` (one link class, or
    the MODEL/KV pair when `two_classes`)."""
    rate, burst = _bits(rate_bytes_s), _burst(rate_bytes_s)
    common = f"quantum {_QUANTUM_BYTES} burst {burst} cburst {burst}"
    if not two_classes:
        return [
            f"qdisc replace dev {dev} root handle 1: htb default 1",
            f"class add dev {dev} parent 1: classid {LINK_CLASS} htb rate {rate} ceil {rate} {common}",
        ]
    model_rate = _bits(rate_bytes_s * MODEL_SHARE)
    kv_rate = _bits(rate_bytes_s * (1 - MODEL_SHARE))
    model, kv = KernelClass.MODEL.value, KernelClass.KV.value
    return [
        f"qdisc replace dev {dev} root handle 1: htb default {kv.split(':')[1]}",
        f"class add dev {dev} parent 1: classid {LINK_CLASS} htb rate {rate} ceil {rate} {common}",
        f"class add dev {dev} parent {LINK_CLASS} classid {model} htb rate {model_rate} ceil {rate} "
        f"prio 0 {common}",
        f"class add dev {dev} parent {LINK_CLASS} classid {kv} htb rate {kv_rate} ceil {rate} "
        f"prio 1 {common}",
        f"filter add dev {dev} parent 1: protocol ip prio 1 u32 "
        f"match ip dsfield {TOS_MODEL:#04x} {_DSCP_MASK:#04x} flowid {model}",
        f"filter add dev {dev} parent 1: protocol ip prio 2 u32 "
        f"match ip dsfield {TOS_KV:#04x} {_DSCP_MASK:#04x} flowid {kv}",
        f"filter add dev {dev} parent 1: protocol arp prio 3 u32 match u32 0 0 flowid {model}",
    ]


@dataclass(frozen=True)
class ClassCounters:
    """One HTB class's counters (`tc -s class show`): what it sent and what it dropped."""

    sent_bytes: int
    sent_packets: int
    dropped_packets: int
    overlimits: int
    backlog_bytes: int


_CLASS_HEAD = re.compile(r"^class htb (\d+:\d+) ")
_SENT = re.compile(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)")
_BACKLOG = re.compile(r"backlog (\d+)b")


def parse_class_stats(text: str) -> dict[str, ClassCounters]:
    """`tc -s class show dev X` output -> class id -> counters (iproute2 6.1 prints no JSON
    for HTB classes)."""
    out: dict[str, ClassCounters] = {}
    for block in re.split(r"\n(?=class )", text.strip()):
        head = _CLASS_HEAD.match(block)
        sent = _SENT.search(block)
        if not head or not sent:
            continue
        backlog = _BACKLOG.search(block)
        out[head.group(1)] = ClassCounters(
            sent_bytes=int(sent.group(1)), sent_packets=int(sent.group(2)),
            dropped_packets=int(sent.group(3)), overlimits=int(sent.group(4)),
            backlog_bytes=int(backlog.group(1)) if backlog else 0)
    return out
