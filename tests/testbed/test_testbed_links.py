"""The kernel does what the spec says on every link: each direction of each shaped interface
delivers its rate (±15 %), the interface counters match the bytes sent, the TOS byte picks the
HTB class on both ends, and a link taken down cuts its host off that network until it is up.

Rates: p0's CNIC is twice d0's, so p0 -> d0 is limited by d0's RX shaper (the bridge-side
peer) and d0 -> p0 by d0's TX shaper; on the storage network p0's TX and d0's RX are the only
shaped ends (the storage host is unshaped). A missing shaper in any direction shows up as
twice the rate, or as unshaped speed."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from dualpath.testbed import (
    TOS_KV,
    TOS_MODEL,
    Direction,
    HostRole,
    HostSpec,
    KernelClass,
    Network,
    Testbed,
    TestbedSpec,
)
from dualpath.testbed.rate import TRAFFIC, measure_rate, traffic_argv

RATE = 12.5e6  # 100 Mbit/s: one Python stream fills it with little CPU
SPEC = TestbedSpec((
    HostSpec("store", HostRole.STORAGE),
    HostSpec("p0", HostRole.PREFILL, snic_bytes_s=RATE, cnic_bytes_s=2 * RATE),
    HostSpec("d0", HostRole.DECODE, snic_bytes_s=RATE, cnic_bytes_s=RATE),
))


@pytest.fixture(scope="module")
def tb(netns_ok: None) -> Iterator[Testbed]:
    with Testbed(SPEC) as testbed:
        yield testbed


@pytest.mark.parametrize(("src", "dst", "network"), [
    ("d0", "p0", Network.COMPUTE),  # d0's CNIC TX
    ("p0", "d0", Network.COMPUTE),  # d0's CNIC RX (p0's TX allows twice that)
    ("p0", "store", Network.STORAGE),  # p0's SNIC TX
    ("store", "d0", Network.STORAGE),  # d0's SNIC RX
])
def test_each_direction_of_a_shaped_link_delivers_its_rate(tb, src, dst, network) -> None:
    got = measure_rate(tb[src], tb[dst], network, payload_bytes=12_000_000,
                       warmup_bytes=1_500_000)
    wire_rate = got.goodput_bytes_s * got.wire_over_payload
    assert 0.85 * RATE <= wire_rate <= 1.15 * RATE, (
        f"{src}->{dst} {network.name}: {wire_rate / 1e6:.2f} MB/s on the wire, "
        f"goodput {got.goodput_bytes_s / 1e6:.2f} MB/s, configured {RATE / 1e6:.2f} MB/s")


@pytest.mark.parametrize(("tos", "expected"), [
    (TOS_MODEL, KernelClass.MODEL), (TOS_KV, KernelClass.KV), (0, KernelClass.KV)])
def test_counters_match_the_bytes_and_the_tos_picks_the_class_on_both_ends(tb, tos, expected):
    payload = 3_000_000
    got = measure_rate(tb["p0"], tb["d0"], Network.COMPUTE, payload_bytes=payload,
                       warmup_bytes=100_000, tos=tos)
    # veth counts a segmentation-offload super-packet once: bytes are payload + a few headers
    assert payload <= got.sender_counters.tx_bytes <= 1.05 * payload
    assert payload <= got.receiver_counters.rx_bytes <= 1.05 * payload
    # the shapers count every segment with its headers (~4.6 % at MTU 1500)
    assert payload <= got.tx_wire_bytes <= 1.08 * payload
    assert got.rx_wire_bytes == pytest.approx(got.tx_wire_bytes, rel=0.01)
    # everything went through the expected class, at the sender's TX and the receiver's RX
    assert got.tx_class_bytes >= 0.99 * got.tx_wire_bytes
    assert got.rx_class_bytes >= 0.99 * got.rx_wire_bytes
    assert got.tx_class is got.rx_class is expected


def _ping(src, addr: str, port: int, timeout_s: float) -> bool:
    return src.run([*TRAFFIC, "ping", "--to", f"{addr}:{port}", "--timeout-s", str(timeout_s)],
                   check=False).returncode == 0


def test_a_link_taken_down_cuts_the_host_off_until_it_is_up_again(tb) -> None:
    p0, d0 = tb["p0"], tb["d0"]
    echo = d0.popen([*TRAFFIC, "echo", "--port", "5501"])
    try:
        assert _ping(p0, d0.compute_addr, 5501, 5.0)
        d0.set_link(Network.COMPUTE, up=False)
        try:
            assert not _ping(p0, d0.compute_addr, 5501, 1.0)  # times out
            assert _ping(p0, d0.storage_addr, 5501, 5.0)  # the other network is untouched
        finally:
            d0.set_link(Network.COMPUTE, up=True)
        deadline = time.monotonic() + 10
        while not _ping(p0, d0.compute_addr, 5501, 1.0):
            assert time.monotonic() < deadline, "the link did not come back"
        assert d0.run(["cat", "/sys/class/net/cmp0/operstate"]).stdout.strip() == "up"
    finally:
        echo.kill()
        echo.wait()


def test_two_saturating_streams_share_a_cnic_99_to_1_and_kv_alone_gets_it_all(tb) -> None:
    """The weighted arbitration: a MODEL and a KV bulk stream at once get their HTB rates
    (99 % and 1 % of d0's CNIC TX); KV is throttled, not starved. (KV alone getting the whole
    link, the work-conserving half, is the rate test above: it runs in the KV class.)"""
    p0, d0 = tb["p0"], tb["d0"]
    sink = p0.popen(traffic_argv("sink", "--port", "5601", "--streams", "2", realtime=True),
                    stdout=subprocess.DEVNULL)
    blasters = [d0.popen(traffic_argv("blast", "--to", f"{p0.compute_addr}:5601", "--tos", str(tos),
                                      "--idle-s", "0", "--load-s", "4", realtime=True),
                         stdout=subprocess.DEVNULL) for tos in (TOS_MODEL, TOS_KV)]
    try:
        def classes() -> tuple[int, int]:
            c = d0.shaper_counters(Network.COMPUTE, Direction.TX)
            return c.of(KernelClass.MODEL).sent_bytes, c.of(KernelClass.KV).sent_bytes

        start = classes()
        deadline = time.monotonic() + 10
        while True:  # both streams under way
            time.sleep(0.1)
            now = classes()
            if now[0] - start[0] > 500_000 and now[1] - start[1] > 0:
                break
            assert time.monotonic() < deadline, "the streams did not start"
        time.sleep(0.3)
        m0, k0 = classes()
        t0 = time.monotonic()
        time.sleep(1.0)
        m1, k1 = classes()
        elapsed = time.monotonic() - t0
    finally:
        for proc in [*blasters, sink]:
            proc.kill()
            proc.wait()
    model, kv = m1 - m0, k1 - k0
    assert 0.85 * RATE <= (model + kv) / elapsed <= 1.15 * RATE  # together they fill the link
    print(f"MODEL share {model / (model + kv):.4f}, total {(model + kv) / elapsed / RATE:.3f} of the rate")
    assert 0.95 <= model / (model + kv) <= 0.995, (model, kv)  # ~99:1
    assert kv > 0  # throttled to its 1 %, never starved
