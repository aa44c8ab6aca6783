"""Names of a testbed's namespaces, and removing what dead runs left behind.

Every namespace a testbed makes is called `dptb-<pid>-<start>-<seq>-<host>`: the pid and the
kernel start time (clock ticks since boot, /proc/<pid>/stat field 22) of the process that made
it, and a per-process counter. A name whose process is gone, or whose pid now belongs to a
younger process, belongs to a dead run; `cleanup_stale()` ends the processes still inside such
a namespace and deletes it, which also deletes every veth and bridge in it (the testbed never
creates anything in the root namespace, so nothing else can be left over).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import signal
import time
from dataclasses import dataclass

from dualpath.testbed import commands

log = logging.getLogger(__name__)

PREFIX = "dptb"
_NAME = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-(\d+)-([a-z][a-z0-9]*)$")
_seq = itertools.count()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[19])  # field 22 overall; fields[0] is field 3 (state)


@dataclass(frozen=True)
class RunTag:
    """Who made a set of namespaces: the owner process and a per-process sequence number."""

    pid: int
    start: int
    seq: int

    @classmethod
    def new(cls) -> RunTag:
        pid = os.getpid()
        start = start_time(pid)
        if start is None:  # pragma: no cover - /proc/self always exists on Linux
            raise commands.TestbedError("cannot read /proc/self/stat")
        return cls(pid, start, next(_seq))

    @property
    def prefix(self) -> str:
        return f"{PREFIX}-{self.pid}-{self.start}-{self.seq}-"

    def netns(self, host: str) -> str:
        return self.prefix + host

    def alive(self) -> bool:
        return start_time(self.pid) == self.start


def parse(netns: str) -> tuple[RunTag, str] | None:
    """(owner tag, host) for a testbed namespace name, else None."""
    m = _NAME.match(netns)
    if not m:
        return None
    return RunTag(int(m.group(1)), int(m.group(2)), int(m.group(3))), m.group(4)


def remove_netns(netns: str) -> None:
    """End every process inside `netns`, then delete it (its interfaces go with it)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = commands.netns_pids(netns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2.0
        while commands.netns_pids(netns) and time.monotonic() < deadline:
            time.sleep(0.05)
    commands.run(["ip", "netns", "delete", netns], check=False)


def cleanup_stale() -> list[str]:
    """Delete the namespaces of testbeds whose process is dead; returns their names.
    Namespaces of live testbeds (this process's included) are left alone."""
    commands.check_environment()
    removed = []
    for netns in commands.list_netns():
        parsed = parse(netns)
        if parsed is None or parsed[0].alive():
            continue
        log.info("removing stale testbed namespace %s", netns)
        remove_netns(netns)
        removed.append(netns)
    return removed
