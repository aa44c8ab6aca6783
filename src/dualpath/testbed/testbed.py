"""`Testbed`: a multi-host cluster's networks, built from Linux network namespaces.

`up()` makes, all named `dptb-<pid>-<start>-<seq>-*` (see naming.py):

- a namespace `...-bridges` holding two bridges, `storage` and `compute` (so the root
  namespace is never touched: no interface, address or route is added there);
- one namespace per host, with loopback up, IPv6 off (no stray router solicitations in the
  counters), and one veth per network it is on: `sto0` / `cmp0` inside the host, its peer
  `<host>-s` / `<host>-c` a port of the bridge;
- HTB shaping (shaping.py) of every interface with a rate: TX on the host's veth, RX on the
  bridge-side peer (its egress is exactly what the bridge delivers to the host; no IFB).

`down()` ends the processes started through the hosts, then everything left in each
namespace, and deletes the namespaces (which deletes their veths and bridges). It runs on
leaving the `with` block (exception or not), at interpreter exit, and on SIGTERM; `up()` first
removes what dead runs left (`cleanup_stale`), so even a SIGKILLed run is cleaned up by the
next one.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from dualpath.core.errors import ConfigError, DualPathError
from dualpath.testbed import commands, naming
from dualpath.testbed.host import Host
from dualpath.testbed.shaping import tc_lines
from dualpath.testbed.spec import BRIDGES_TAG, HostSpec, Network, TestbedSpec

log = logging.getLogger(__name__)
_NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}

_live: dict[int, Testbed] = {}
_live_lock = threading.Lock()
_hooks_installed = False


class Testbed:
    """The namespaces, networks and shapers of `spec`; use as a context manager."""

    __test__ = False

    def __init__(self, spec: TestbedSpec) -> None:
        self.spec = spec
        self._tag: naming.RunTag | None = None
        self._hosts: dict[str, Host] = {}
        self._made: list[str] = []  # namespaces created so far, in creation order

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Testbed:
        return self.up()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    @property
    def is_up(self) -> bool:
        return self._tag is not None

    def up(self) -> Testbed:
        """Build everything; on any failure, remove what was built and re-raise."""
        if self.is_up:
            raise ConfigError("testbed is already up")
        commands.check_environment()
        naming.cleanup_stale()
        self._tag = naming.RunTag.new()
        _register(self)
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        log.info("testbed %s up: %s", self._tag.prefix, ", ".join(
            f"{h.name} {h.storage_addr or '-'}/{h.compute_addr or '-'}" for h in self.hosts))
        return self

    def down(self) -> None:
        """Remove everything `up()` made; idempotent, never raises for a missing piece. In a
        forked child it does nothing: only the process that made the testbed removes it."""
        if self._tag is None or os.getpid() != self._tag.pid:
            return
        for host in self._hosts.values():
            try:
                host.stop_processes()
            except Exception:  # keep removing the rest
                log.exception("stopping processes of %s", host.name)
        for netns in reversed(self._made):
            try:
                naming.remove_netns(netns)
            except Exception:
                log.exception("removing namespace %s", netns)
        log.info("testbed %s down", self._tag.prefix)
        self._made.clear()
        self._hosts.clear()
        self._tag = None
        _unregister(self)

    # -- access ---------------------------------------------------------------------------
    @property
    def hosts(self) -> list[Host]:
        return list(self._hosts.values())

    def host(self, name: str) -> Host:
        if name not in self._hosts:
            raise ConfigError(f"no host {name!r} (is the testbed up?); hosts: {list(self._hosts)}")
        return self._hosts[name]

    def __getitem__(self, name: str) -> Host:
        return self.host(name)

    @property
    def prefix(self) -> str:
        """The common prefix of this testbed's namespace names."""
        return self._require_tag().prefix

    @property
    def bridges_netns(self) -> str:
        return self._require_tag().netns(BRIDGES_TAG)

    def namespaces(self) -> list[str]:
        return list(self._made)

    # -- building -------------------------------------------------------------------------
    def _require_tag(self) -> naming.RunTag:
        if self._tag is None:
            raise ConfigError("the testbed is not up")
        return self._tag

    def _build(self) -> None:
        tag = self._require_tag()
        bridges = self.bridges_netns
        for netns in [bridges, *(tag.netns(h.name) for h in self.spec.hosts)]:
            commands.run(["ip", "netns", "add", netns])
            self._made.append(netns)
            commands.set_sysctls(netns, _NO_IPV6)
        bridge_lines: list[str] = []
        for net in Network:
            bridge_lines += [f"link add {net.bridge} type bridge stp_state 0",
                             f"link set {net.bridge} up"]
        bridge_tc: list[str] = []
        for spec in self.spec.hosts:
            host = self._make_host(spec, tag.netns(spec.name), bridges)
            for net in spec.networks:
                port = f"{spec.name}-{net.port_suffix}"
                bridge_lines += [f"link add {port} type veth peer name {net.value} netns {host.netns}",
                                 f"link set {port} master {net.bridge}",
                                 f"link set {port} up"]
                rate = spec.rate_bytes_s(net)
                if rate is not None:
                    bridge_tc += tc_lines(port, rate, two_classes=net is Network.COMPUTE)
        commands.batch("ip", bridges, bridge_lines)
        for host in self._hosts.values():
            lines = ["link set lo up"]
            host_tc: list[str] = []
            for net in host.networks:
                lines += [f"addr add {host.address(net)}/{net.subnet.prefixlen} dev {net.value}",
                          f"link set {net.value} up"]
                rate = host.spec.rate_bytes_s(net)
                if rate is not None:
                    host_tc += tc_lines(net.value, rate, two_classes=net is Network.COMPUTE)
            commands.batch("ip", host.netns, lines)
            commands.batch("tc", host.netns, host_tc)
        commands.batch("tc", bridges, bridge_tc)

    def _make_host(self, spec: HostSpec, netns: str, bridges: str) -> Host:
        addresses: dict[Network, str] = {}
        for net in spec.networks:
            addr = self.spec.address(spec.name, net)
            if addr is None:  # pragma: no cover - spec.networks and address() agree
                raise ConfigError(f"host {spec.name} has no {net.name.lower()} address")
            addresses[net] = addr
        host = Host(spec, netns, bridges, addresses)
        self._hosts[spec.name] = host
        return host


def environment_problem() -> str | None:
    """Why no testbed can be built here (not root, no iproute2, no namespaces, veth or HTB in
    this kernel/container), or None; for skip reasons. Builds and removes a one-namespace
    probe (~50 ms)."""
    try:
        commands.check_environment()
    except ConfigError as exc:
        return str(exc)
    netns = naming.RunTag.new().netns("probe")
    try:
        commands.run(["ip", "netns", "add", netns])
        commands.batch("ip", netns, ["link add probe0 type veth peer name probe1",
                                     "link set probe0 up"])
        commands.batch("tc", netns, tc_lines("probe0", 1e6, two_classes=True))
    except DualPathError as exc:
        return f"cannot build a testbed here: {exc}"
    finally:
        naming.remove_netns(netns)
    return None


# -- cleanup on exit and SIGTERM --------------------------------------------------------------
def _register(testbed: Testbed) -> None:
    with _live_lock:
        _live[id(testbed)] = testbed
    _install_hooks()


def _unregister(testbed: Testbed) -> None:
    with _live_lock:
        _live.pop(id(testbed), None)


def down_all() -> None:
    """Take down every testbed of this process that is still up."""
    with _live_lock:
        live = list(_live.values())
    for testbed in live:
        testbed.down()


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(down_all)
    if threading.current_thread() is not threading.main_thread():
        log.warning("testbed started off the main thread: no SIGTERM cleanup (atexit only)")
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> Any:
        down_all()
        if callable(previous):
            return previous(signum, frame)
        if previous == signal.SIG_IGN:
            return None
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # die of SIGTERM as before
        os.kill(os.getpid(), signal.SIGTERM)
        return None

    signal.signal(signal.SIGTERM, on_sigterm)
