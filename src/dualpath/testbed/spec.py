"""What a testbed is made of: hosts, their roles, their NIC rates, and the address plan.

Pure data (frozen dataclasses, no I/O), so a spec can be built, validated and printed without
root. `TestbedSpec.cluster(prefill_nodes, decode_nodes, ...)` is the usual shape: a front end
(`fe`: HTTP + scheduler), a storage host (`store`), prefill nodes `p0, p1, ...` and decode
nodes `d0, d1, ...`.

Address plan (every testbed has its own namespaces, so two testbeds may use the same
addresses at once): host number N is the host's 1-based position in `hosts`;

- storage network 10.231.0.N/24 on interface `sto0` (the host's SNIC),
- compute network 10.232.0.N/24 on interface `cmp0` (the host's CNIC).

Which host is on which network (`HostRole`): the storage host only on the storage network;
the front end on both (the compute network carries its control plane to the engines; the
storage network lets the scheduler ask the store how many prompt blocks are stored); prefill
and decode nodes on both.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

from dualpath.core.errors import ConfigError

STORAGE_SUBNET = ipaddress.IPv4Network("10.231.0.0/24")
COMPUTE_SUBNET = ipaddress.IPv4Network("10.232.0.0/24")
MAX_HOSTS = 250
BRIDGES_TAG = "bridges"  # the namespace suffix of the two bridges; no host may use it
_HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")  # bridge-side ports are "<name>-s"/"-c" (<=15)


class Network(enum.Enum):
    """The two networks; the value is the interface name inside every host namespace."""

    STORAGE = "sto0"
    COMPUTE = "cmp0"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return STORAGE_SUBNET if self is Network.STORAGE else COMPUTE_SUBNET

    @property
    def bridge(self) -> str:
        """The bridge's name in the bridges namespace."""
        return "storage" if self is Network.STORAGE else "compute"

    @property
    def port_suffix(self) -> str:
        """Bridge-side veth of host h: f"{h}-{suffix}"."""
        return "s" if self is Network.STORAGE else "c"


class HostRole(enum.Enum):
    FRONTEND = "frontend"  # HTTP front end + scheduler
    STORAGE = "storage"  # the KV store's server
    PREFILL = "prefill"  # a prefill node (its engines)
    DECODE = "decode"  # a decode node (its engines)

    @property
    def networks(self) -> tuple[Network, ...]:
        if self is HostRole.STORAGE:
            return (Network.STORAGE,)
        return (Network.STORAGE, Network.COMPUTE)


@dataclass(frozen=True)
class HostSpec:
    """One host. A rate of None leaves that interface unshaped (no qdisc at all); a rate
    shapes both directions of the interface (TX and RX) to that many bytes/s."""

    name: str
    role: HostRole
    snic_bytes_s: float | None = None
    cnic_bytes_s: float | None = None

    def __post_init__(self) -> None:
        if not _HOST_NAME.match(self.name) or self.name == BRIDGES_TAG:
            raise ConfigError(f"host name {self.name!r}: use 1-12 lowercase letters/digits, "
                              f"starting with a letter (not {BRIDGES_TAG!r})")
        for label, rate in (("snic_bytes_s", self.snic_bytes_s), ("cnic_bytes_s", self.cnic_bytes_s)):
            if rate is not None and not rate >= 1000:
                raise ConfigError(f"host {self.name}: {label} must be >= 1000 bytes/s or None, "
                                  f"got {rate!r}")
        if self.role is HostRole.STORAGE and self.cnic_bytes_s is not None:
            raise ConfigError(f"host {self.name}: a storage host has no compute interface")

    @property
    def networks(self) -> tuple[Network, ...]:
        return self.role.networks

    def rate_bytes_s(self, network: Network) -> float | None:
        return self.snic_bytes_s if network is Network.STORAGE else self.cnic_bytes_s


@dataclass(frozen=True)
class TestbedSpec:
    """The hosts of one testbed, in address order (host number = index + 1)."""

    __test__ = False  # not a pytest test class despite the name

    hosts: tuple[HostSpec, ...]

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ConfigError("a testbed needs at least one host")
        if len(self.hosts) > MAX_HOSTS:
            raise ConfigError(f"at most {MAX_HOSTS} hosts, got {len(self.hosts)}")
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise ConfigError(f"host names must be unique, got {names}")

    @classmethod
    def cluster(cls, prefill_nodes: int = 1, decode_nodes: int = 2, *,
                snic_bytes_s: float | None = 50e6, cnic_bytes_s: float | None = 100e6,
                store_snic_bytes_s: float | None = None) -> TestbedSpec:
        """fe, store, p0..p{P-1}, d0..d{D-1}. Prefill and decode nodes get `snic_bytes_s` and
        `cnic_bytes_s`; the storage host `store_snic_bytes_s` (None: unshaped, like a storage
        cluster far wider than one node's SNIC); the front end is unshaped."""
        if prefill_nodes < 0 or decode_nodes < 0 or prefill_nodes + decode_nodes == 0:
            raise ConfigError("need at least one prefill or decode node")
        hosts = [HostSpec("fe", HostRole.FRONTEND),
                 HostSpec("store", HostRole.STORAGE, snic_bytes_s=store_snic_bytes_s)]
        hosts += [HostSpec(f"p{i}", HostRole.PREFILL, snic_bytes_s, cnic_bytes_s)
                  for i in range(prefill_nodes)]
        hosts += [HostSpec(f"d{i}", HostRole.DECODE, snic_bytes_s, cnic_bytes_s)
                  for i in range(decode_nodes)]
        return cls(tuple(hosts))

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise ConfigError(f"no host {name!r}; hosts are {[h.name for h in self.hosts]}")

    def number(self, name: str) -> int:
        """The host's number N (its addresses end in .N)."""
        return [h.name for h in self.hosts].index(self.host(name).name) + 1

    def address(self, name: str, network: Network) -> str | None:
        """The host's address on `network`, or None when it is not on that network."""
        if network not in self.host(name).networks:
            return None
        return str(network.subnet.network_address + self.number(name))
