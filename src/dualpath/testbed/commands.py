"""Running `ip` and `tc`: the one place the testbed touches iproute2.

Commands go through `-batch -` (one process per namespace and tool instead of one per line:
on a loaded machine each `ip` start costs tens of milliseconds). Failures become
`TestbedError` with the tool's own message and the batch that failed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence

from dualpath.core.errors import ConfigError, DualPathError

log = logging.getLogger(__name__)
_TIMEOUT_S = 60.0


class TestbedError(DualPathError):
    """An `ip`/`tc` command failed while building, inspecting or removing a testbed."""

    __test__ = False


def check_environment() -> None:
    """Raise ConfigError unless we are root and iproute2's `ip` and `tc` are installed."""
    if os.name != "posix" or not os.path.isdir("/proc/self/ns"):
        raise ConfigError("the netns testbed needs Linux network namespaces")
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"the netns testbed needs iproute2 ({', '.join(missing)} not found; "
                          "apt-get install iproute2)")
    if os.geteuid() != 0:
        raise ConfigError("the netns testbed needs root (network namespaces, veth, tc)")


def run(argv: Sequence[str], *, input_text: str | None = None, check: bool = True,
        timeout_s: float = _TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run one command; with `check`, a non-zero exit raises TestbedError."""
    try:
        proc = subprocess.run(list(argv), input=input_text, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise ConfigError(f"{argv[0]} not found (apt-get install iproute2)") from exc
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"{' '.join(argv)} did not finish in {timeout_s:.0f} s") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        batch = f"\nbatch:\n{input_text}" if input_text else ""
        raise TestbedError(f"{' '.join(argv)} failed (exit {proc.returncode}): {detail}{batch}")
    return proc


def batch(tool: str, netns: str, lines: Sequence[str]) -> None:
    """Run `lines` with `tool -n netns -batch -` (tool is "ip" or "tc"); stops at the first
    failing line."""
    if not lines:
        return
    log.debug("%s -n %s batch:\n%s", tool, netns, "\n".join(lines))
    run([tool, "-n", netns, "-batch", "-"], input_text="\n".join(lines) + "\n")


def netns_exec(netns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside `netns` (`ip netns exec` execs it: same pid)."""
    return ["ip", "netns", "exec", netns, *argv]


def list_netns() -> list[str]:
    """Names of the named network namespaces (`ip netns list`)."""
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    """Processes inside `netns` (empty when it is already gone)."""
    proc = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def set_sysctls(netns: str, settings: dict[str, str]) -> None:
    """Per-namespace sysctls (`net.*`), written from inside the namespace with plain `sh`
    (`/proc/sys/net` shows the namespace of the process that opens it)."""
    script = "; ".join(f"echo {value} > /proc/sys/{key.replace('.', '/')}"
                       for key, value in settings.items())
    run(netns_exec(netns, ["sh", "-ec", script]))
