"""One host of a testbed: its namespace, its addresses, running programs in it, its counters.

A host's interfaces are `sto0` (storage network, its SNIC) and `cmp0` (compute network, its
CNIC). Its TX is shaped on those interfaces; its RX on their bridge-side peers
(`<host>-s`, `<host>-c` in the bridges namespace), whose egress is what the host receives.
"""

from __future__ import annotations

import enum
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dualpath.core.errors import ConfigError
from dualpath.testbed import commands
from dualpath.testbed.shaping import LINK_CLASS, ClassCounters, KernelClass, parse_class_stats
from dualpath.testbed.spec import HostRole, HostSpec, Network

log = logging.getLogger(__name__)
_STATS = ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")


class Direction(enum.Enum):
    TX = "tx"  # leaving the host (shaped on its own interface)
    RX = "rx"  # arriving at the host (shaped on the bridge-side peer)


@dataclass(frozen=True)
class IfCounters:
    """An interface's kernel counters (/sys/class/net/<if>/statistics). veth counts a TCP
    segmentation-offload super-packet once, so packets < wire frames; bytes are headers and
    payload, without Ethernet preamble or FCS."""

    rx_bytes: int
    rx_packets: int
    tx_bytes: int
    tx_packets: int

    def __sub__(self, other: IfCounters) -> IfCounters:
        return IfCounters(self.rx_bytes - other.rx_bytes, self.rx_packets - other.rx_packets,
                          self.tx_bytes - other.tx_bytes, self.tx_packets - other.tx_packets)


@dataclass(frozen=True)
class ShaperCounters:
    """The HTB classes of one direction of one interface (None: no such class)."""

    link: ClassCounters
    model: ClassCounters | None
    kv: ClassCounters | None

    def of(self, kernel_class: KernelClass) -> ClassCounters:
        found = self.model if kernel_class is KernelClass.MODEL else self.kv
        if found is None:
            raise ConfigError(f"this interface has no {kernel_class.name} class")
        return found


class Host:
    """A handle on a host of a running testbed (made by `Testbed.up()`)."""

    def __init__(self, spec: HostSpec, netns: str, bridges_netns: str,
                 addresses: dict[Network, str]) -> None:
        self.spec = spec
        self.netns = netns
        self._bridges_netns = bridges_netns
        self._addresses = dict(addresses)
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, netns={self.netns!r}, addresses={self._addresses})"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def role(self) -> HostRole:
        return self.spec.role

    @property
    def networks(self) -> tuple[Network, ...]:
        return self.spec.networks

    @property
    def storage_addr(self) -> str | None:
        return self._addresses.get(Network.STORAGE)

    @property
    def compute_addr(self) -> str | None:
        return self._addresses.get(Network.COMPUTE)

    def address(self, network: Network) -> str:
        if network not in self._addresses:
            raise ConfigError(f"host {self.name} is not on the {network.name.lower()} network")
        return self._addresses[network]

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run in this host's namespace (for callers with their own spawn)."""
        return commands.netns_exec(self.netns, argv)

    def run(self, argv: Sequence[str], *, check: bool = True, timeout_s: float = 60.0,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `argv` in this host and wait (text output captured); `check` raises
        TestbedError on a non-zero exit."""
        return commands.run(self.exec_argv(argv), input_text=input_text, check=check,
                            timeout_s=timeout_s)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` in this host (keyword arguments go to subprocess.Popen: env, stdout,
        ...). The testbed ends it, and anything else left in the namespace, on `down()`."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.exec_argv(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def counters(self) -> dict[Network, IfCounters]:
        """Kernel interface counters of each of this host's networks."""
        files = [f"/sys/class/net/{net.value}/statistics/{stat}"
                 for net in self.networks for stat in _STATS]
        values = [int(v) for v in self.run(["cat", *files]).stdout.split()]
        out = {}
        for i, net in enumerate(self.networks):
            out[net] = IfCounters(*values[i * len(_STATS):(i + 1) * len(_STATS)])
        return out

    def shaper_counters(self, network: Network = Network.COMPUTE,
                        direction: Direction = Direction.TX) -> ShaperCounters:
        """`tc -s` counters of the HTB classes shaping this host's `network` interface in
        `direction`; ConfigError when that interface is unshaped."""
        netns, dev = self._shaped_dev(network, direction)
        if self.spec.rate_bytes_s(network) is None:
            raise ConfigError(f"host {self.name}'s {network.name.lower()} interface is unshaped")
        stats = parse_class_stats(
            commands.run(["tc", "-n", netns, "-s", "class", "show", "dev", dev]).stdout)
        if LINK_CLASS not in stats:
            raise commands.TestbedError(f"no HTB link class on {dev} in {netns}")
        return ShaperCounters(stats[LINK_CLASS], stats.get(KernelClass.MODEL.value),
                              stats.get(KernelClass.KV.value))

    def set_link(self, network: Network, up: bool) -> None:
        """Take this host's `network` interface down or back up (a fault drill: its address
        stays, its route and carrier go; the bridge-side peer loses carrier)."""
        self.address(network)
        commands.run(["ip", "-n", self.netns, "link", "set", network.value,
                      "up" if up else "down"])

    def _shaped_dev(self, network: Network, direction: Direction) -> tuple[str, str]:
        self.address(network)
        if direction is Direction.TX:
            return self.netns, network.value
        return self._bridges_netns, f"{self.name}-{network.port_suffix}"

    def stop_processes(self, grace_s: float = 3.0) -> None:
        """End the processes `popen` started (SIGTERM, then SIGKILL after `grace_s`)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("host %s: pid %d ignored SIGTERM; killing it", self.name, proc.pid)
                proc.kill()
                proc.wait(timeout=grace_s)
        self._procs.clear()
