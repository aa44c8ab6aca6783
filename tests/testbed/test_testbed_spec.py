"""The pure parts of the testbed (no root needed): spec validation, the address plan, the tc
commands each interface gets, parsing tc's counters, namespace names."""

from __future__ import annotations

import pytest

from dualpath.core.errors import ConfigError
from dualpath.testbed import (
    TOS_KV,
    TOS_MODEL,
    HostRole,
    HostSpec,
    KernelClass,
    Network,
    TestbedSpec,
    classify_tos,
)
from dualpath.testbed.naming import PREFIX, RunTag, parse
from dualpath.testbed.shaping import parse_class_stats, tc_lines


def test_cluster_spec_names_roles_and_addresses() -> None:
    spec = TestbedSpec.cluster(prefill_nodes=1, decode_nodes=2)
    assert [h.name for h in spec.hosts] == ["fe", "store", "p0", "d0", "d1"]
    assert spec.address("fe", Network.STORAGE) == "10.231.0.1"
    assert spec.address("fe", Network.COMPUTE) == "10.232.0.1"
    assert spec.address("store", Network.STORAGE) == "10.231.0.2"
    assert spec.address("store", Network.COMPUTE) is None  # storage network only
    assert spec.address("d1", Network.COMPUTE) == "10.232.0.5"
    assert spec.host("store").role is HostRole.STORAGE
    assert spec.host("p0").snic_bytes_s == 50e6 and spec.host("fe").cnic_bytes_s is None


@pytest.mark.parametrize("make", [
    lambda: HostSpec("Bad", HostRole.PREFILL),
    lambda: HostSpec("averyveryverylongname", HostRole.PREFILL),
    lambda: HostSpec("bridges", HostRole.PREFILL),
    lambda: HostSpec("p0", HostRole.PREFILL, cnic_bytes_s=0),
    lambda: HostSpec("s", HostRole.STORAGE, cnic_bytes_s=1e6),
    lambda: TestbedSpec(()),
    lambda: TestbedSpec((HostSpec("a", HostRole.DECODE), HostSpec("a", HostRole.DECODE))),
    lambda: TestbedSpec.cluster(0, 0),
])
def test_bad_specs_are_refused_with_a_config_error(make) -> None:
    with pytest.raises(ConfigError):
        make()


def test_a_cnic_gets_a_model_and_a_kv_class_selected_by_dscp() -> None:
    lines = tc_lines("cmp0", 12.5e6, two_classes=True)
    text = "\n".join(lines)
    assert "htb default 20" in lines[0]  # unmarked traffic -> KV
    assert "classid 1:1 htb rate 100000000bit ceil 100000000bit" in text
    assert "classid 1:10 htb rate 99000000bit ceil 100000000bit prio 0" in text
    assert "classid 1:20 htb rate 1000000bit ceil 100000000bit prio 1" in text
    assert "match ip dsfield 0xb8 0xfc flowid 1:10" in text
    assert "match ip dsfield 0x20 0xfc flowid 1:20" in text
    assert "protocol arp" in text
    single = tc_lines("sto0", 1e6, two_classes=False)
    assert len(single) == 2 and "htb default 1" in single[0]


def test_tos_values_map_to_their_classes() -> None:
    assert (TOS_MODEL, TOS_KV) == (0xB8, 0x20)
    assert classify_tos(TOS_MODEL) is KernelClass.MODEL
    assert classify_tos(TOS_MODEL | 0x01) is KernelClass.MODEL  # ECN bits are ignored
    assert classify_tos(TOS_KV) is KernelClass.KV
    assert classify_tos(0) is KernelClass.KV and classify_tos(None) is KernelClass.KV
    assert KernelClass.MODEL.tos == TOS_MODEL


def test_tc_class_counters_are_parsed() -> None:
    text = """class htb 1:10 parent 1:1 prio 0 rate 99Mbit ceil 100Mbit burst 64Kb cburst 64Kb
 Sent 138531 bytes 1077 pkt (dropped 0, overlimits 0 requeues 0)
 backlog 0b 0p requeues 0
 lended: 0 borrowed: 0 giants: 0

class htb 1:1 root rate 100Mbit ceil 100Mbit burst 64Kb cburst 64Kb
 Sent 79286039 bytes 54366 pkt (dropped 3, overlimits 1657 requeues 0)
 backlog 1514b 1p requeues 0

class htb 1:20 parent 1:1 prio 1 rate 1Mbit ceil 100Mbit burst 64Kb cburst 64Kb
 Sent 79147508 bytes 53289 pkt (dropped 0, overlimits 1662 requeues 0)
 backlog 0b 0p requeues 0
"""
    stats = parse_class_stats(text)
    assert set(stats) == {"1:1", "1:10", "1:20"}
    assert stats["1:1"].sent_bytes == 79286039 and stats["1:1"].dropped_packets == 3
    assert stats["1:1"].backlog_bytes == 1514 and stats["1:10"].sent_packets == 1077


def test_namespace_names_carry_their_owner() -> None:
    tag = RunTag.new()
    assert tag.alive()
    name = tag.netns("d0")
    assert name.startswith(f"{PREFIX}-") and parse(name) == (tag, "d0")
    assert parse("dptbx-1-2-3-d0") is None and parse("other") is None
    assert not RunTag(tag.pid, tag.start + 1, 0).alive()  # same pid, another process
