"""A testbed comes up as the spec says and goes away completely: on leaving the `with` block,
on an exception, on SIGTERM; a SIGKILLed run's leftovers are removed by `cleanup_stale`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dualpath.testbed import Network, Testbed, TestbedSpec, cleanup_stale
from dualpath.testbed.commands import list_netns, netns_pids, run
from dualpath.testbed.rate import TRAFFIC

pytestmark = pytest.mark.usefixtures("netns_ok")


def _root_links() -> list[str]:
    return sorted(line.split(":")[1].strip() for line in run(["ip", "-o", "link"]).stdout.splitlines())


def _addresses(host) -> dict[str, str]:
    out = {}
    for line in host.run(["ip", "-o", "-4", "addr"]).stdout.splitlines():
        parts = line.split()
        out[parts[1]] = parts[3]
    return out


def _reachable(src, dst, network: Network, port: int) -> bool:
    echo = dst.popen([*TRAFFIC, "echo", "--port", str(port)])
    try:
        ping = src.run([*TRAFFIC, "ping", "--to", f"{dst.address(network)}:{port}",
                        "--timeout-s", "3"], check=False)
        return ping.returncode == 0
    finally:
        echo.kill()
        echo.wait()


def test_up_builds_the_hosts_and_down_removes_everything() -> None:
    links, netns = _root_links(), set(list_netns())
    with Testbed(TestbedSpec.cluster(prefill_nodes=1, decode_nodes=2)) as tb:
        made = tb.namespaces()
        assert len(made) == 6 and set(made) <= set(list_netns())  # bridges + 5 hosts
        assert _addresses(tb["fe"]) == {"lo": "127.0.0.1/8", "sto0": "10.231.0.1/24",
                                        "cmp0": "10.232.0.1/24"}
        assert _addresses(tb["store"]) == {"lo": "127.0.0.1/8", "sto0": "10.231.0.2/24"}
        assert _addresses(tb["d1"])["cmp0"] == "10.232.0.5/24"
        ports = run(["ip", "-n", tb.bridges_netns, "-o", "link", "show", "master", "compute"]).stdout
        assert sorted(p.split(":")[1].strip().split("@")[0] for p in ports.splitlines()) == [
            "d0-c", "d1-c", "fe-c", "p0-c"]
        qdiscs = run(["tc", "-n", tb["p0"].netns, "qdisc", "show", "dev", "cmp0"]).stdout
        assert "htb 1:" in qdiscs
        assert "htb" not in run(["tc", "-n", tb["fe"].netns, "qdisc", "show", "dev", "cmp0"]).stdout
        assert _reachable(tb["p0"], tb["d1"], Network.COMPUTE, 5401)
        assert _reachable(tb["fe"], tb["store"], Network.STORAGE, 5402)
        assert _links_unchanged(links)
    assert set(list_netns()) == netns
    assert _root_links() == links


def _links_unchanged(before: list[str]) -> bool:
    return _root_links() == before  # nothing is ever created in the root namespace


def test_an_exception_in_the_block_removes_namespaces_and_processes() -> None:
    tb = Testbed(TestbedSpec.cluster(prefill_nodes=1, decode_nodes=0))
    with pytest.raises(RuntimeError), tb:
        sleeper = tb["p0"].popen(["sleep", "60"])
        # a process the testbed did not start itself (a daemon of a daemon) goes as well
        stray = int(tb["p0"].run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"]).stdout)
        prefix = tb.prefix
        raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert not os.path.exists(f"/proc/{stray}") or _zombie(stray)
    assert not [n for n in list_netns() if n.startswith(prefix)]
    assert not tb.is_up


def test_a_forked_child_never_takes_its_parents_testbed_down() -> None:
    with Testbed(TestbedSpec.cluster(prefill_nodes=0, decode_nodes=1)) as tb:
        pid = os.fork()
        if pid == 0:  # the child: what its atexit or SIGTERM handler would do
            try:
                tb.down()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert set(tb.namespaces()) <= set(list_netns())


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_cleanup_stale_removes_dead_runs_and_keeps_live_ones() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = f"dptb-{gone.pid}-1-0-x"  # its owner exited
    reused = f"dptb-{os.getpid()}-1-0-y"  # our pid, but another start time: pid reuse
    unrelated = f"dptbtest{os.getpid()}"
    with Testbed(TestbedSpec.cluster(prefill_nodes=0, decode_nodes=1)) as live:
        for name in (dead, reused, unrelated):
            run(["ip", "netns", "add", name])
        inside = subprocess.Popen(["ip", "netns", "exec", dead, "sleep", "60"])
        try:
            deadline = time.monotonic() + 10
            while not netns_pids(dead) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sorted(cleanup_stale()) == sorted([dead, reused])
            assert inside.wait(timeout=10) != 0  # the process left inside was ended
            assert set(live.namespaces()) <= set(list_netns())  # a live run is kept
            assert unrelated in list_netns()  # not a testbed name: never touched
            assert dead not in list_netns() and reused not in list_netns()
        finally:
            inside.kill()
            inside.wait()
            for name in (dead, reused, unrelated):
                run(["ip", "netns", "delete", name], check=False)


_CHILD = """
import sys, time
from dualpath.testbed import Testbed, TestbedSpec
tb = Testbed(TestbedSpec.cluster(prefill_nodes=1, decode_nodes=1)).up()
tb["d0"].popen(["sleep", "60"])
print(tb.prefix, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_run_leaves_nothing_after_sigterm_or_the_next_cleanup(sig) -> None:
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
    try:
        prefix = child.stdout.readline().strip()
        assert prefix and [n for n in list_netns() if n.startswith(prefix)]
        child.send_signal(sig)
        assert child.wait(timeout=30) == -sig
    finally:
        child.kill()
        child.wait()
    left = [n for n in list_netns() if n.startswith(prefix)]
    if sig == signal.SIGTERM:
        assert left == []  # the handler took it down before dying of SIGTERM
    else:
        assert len(left) == 5  # bridges + 4 hosts: SIGKILL runs no handler ...
        assert sorted(cleanup_stale()) == sorted(left)  # ... so the next run's cleanup does
        assert [n for n in list_netns() if n.startswith(prefix)] == []

