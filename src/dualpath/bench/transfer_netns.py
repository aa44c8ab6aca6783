"""`dualpath bench transfer --testbed netns`: the transfer layer with CURVE authentication and
encryption on, against a raw TCP socket on the same kernel-shaped link (root only).

Two testbed hosts (a prefill and a decode node) whose compute interfaces are HTB-shaped at
`--link-rate`; the sink runs in one namespace, the source in the other
(`bench.transfer_link`). Rounds alternate raw / transport, and the efficiency is the median
over rounds of each transport round's rate divided by the raw round's before it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dualpath.bench.report import format_table, machine_info
from dualpath.core.errors import UserInputError
from dualpath.core.secret import ClusterSecret
from dualpath.core.units import parse_bandwidth, parse_bytes

RAW_PORT, ZMQ_PORT = 7100, 7101


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dualpath.testbed import Testbed, TestbedSpec, environment_problem

    problem = environment_problem()
    if problem is not None:
        raise UserInputError(f"--testbed netns needs root and iproute2: {problem}")
    rate = parse_bandwidth(args.link_rate)
    total = parse_bytes(args.netns_bytes)
    message = parse_bytes(args.message_bytes)
    if rate is None or total < message or message <= 0:
        raise UserInputError("need a finite --link-rate and --netns-bytes >= --message-bytes > 0")
    total -= total % message
    with tempfile.TemporaryDirectory(prefix="dualpath-transfer-netns-") as tmp:
        secret = Path(tmp) / "secret"
        ClusterSecret.load_or_create(secret)
        spec = TestbedSpec.cluster(1, 1, snic_bytes_s=None, cnic_bytes_s=rate)
        with Testbed(spec) as tb:
            src, dst = tb["p0"], tb["d0"]
            common = [str(dst.compute_addr), str(RAW_PORT), str(ZMQ_PORT), str(secret),
                      str(args.repeats), str(total)]
            link = [sys.executable, "-m", "dualpath.bench.transfer_link"]
            sink = dst.popen([*link, "sink", *common], stdout=subprocess.PIPE, text=True)
            assert sink.stdout is not None
            if sink.stdout.readline().strip() != "ready":
                raise UserInputError("the transfer sink did not start")
            time.sleep(0.3)
            done = src.run([*link, "source", *common, str(message), str(src.compute_addr)],
                           timeout_s=3600)
            sink.wait(timeout=60)
    rates = json.loads(done.stdout.strip().splitlines()[-1])
    raw, via = rates["raw_bytes_s"], rates["transport_bytes_s"]
    ratios = [t / r for t, r in zip(via, raw, strict=True)]
    result = {
        "testbed": "netns", "link_rate_bytes_s": rate, "bytes_per_round": total,
        "message_bytes": message, "repeats": args.repeats, "security": "CURVE (zmq + libsodium)",
        "raw_socket_bytes_s": statistics.median(raw), "transport_bytes_s": statistics.median(via),
        "efficiency_vs_raw_socket": statistics.median(ratios),
        "efficiency_vs_raw_socket_rounds": ratios,
        "raw_socket_bytes_s_rounds": raw, "transport_bytes_s_rounds": via,
        "machine": machine_info(),
    }
    print(format_table(["path (netns link)", "bytes/s", "vs raw"], [
        ["raw TCP socket", result["raw_socket_bytes_s"], 1.0],
        ["ZmqTransport + CURVE", result["transport_bytes_s"], result["efficiency_vs_raw_socket"]],
    ]))
    return result
