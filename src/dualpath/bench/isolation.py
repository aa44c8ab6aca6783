"""`dualpath bench isolation`: kernel traffic-class isolation on the netns testbed (root).

Builds a two-host testbed (`p0` -> `d0`, both CNICs shaped to `--rate` in both directions),
first measures what the shaped link delivers (one bulk TCP stream: goodput and wire bytes
through the HTB link class vs the rate), then runs `dualpath.testbed.isolation`: `--rounds`
pairs of idle / loaded phases of `--phase-s` seconds, the loaded ones saturating p0's CNIC
with a bulk stream of `--load-class` (KV: TOS CS1, or unmarked), while request/response
probes of 64 bytes measure round trips in the MODEL class (TOS EF), the KV class and
unmarked. The MODEL figures are the top-level `idle_p50_s` ... `p99_ratio`; the unprotected
classes are under `kv_` and `unmarked_`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dualpath.bench.report import format_table, machine_info
from dualpath.core.errors import UserInputError
from dualpath.core.units import parse_bandwidth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", default="100Mbps",
                        help="CNIC rate of both hosts, each direction (default 100Mbps)")
    parser.add_argument("--rounds", type=int, default=4, help="idle/loaded phase pairs (4)")
    parser.add_argument("--phase-s", type=float, default=2.5, help="seconds per phase (2.5)")
    parser.add_argument("--interval-s", type=float, default=0.003,
                        help="pause between probes of one prober (0.003)")
    parser.add_argument("--load-class", choices=["kv", "unmarked"], default="kv",
                        help="the bulk stream's class (default kv)")
    parser.add_argument("--rate-bytes", default="25MB",
                        help="bytes of the rate-accuracy transfer (default 25MB)")
    parser.add_argument("--no-realtime", action="store_true",
                        help="run probes at normal priority (default: SCHED_FIFO)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dualpath.core.units import parse_bytes
    from dualpath.testbed import (
        TOS_KV,
        HostRole,
        HostSpec,
        Network,
        Testbed,
        TestbedSpec,
        check_environment,
    )
    from dualpath.testbed.isolation import IsolationConfig, measure_isolation
    from dualpath.testbed.rate import measure_rate

    rate = parse_bandwidth(args.rate)
    if rate is None:
        raise UserInputError("--rate must be a finite rate")
    if args.rounds < 1 or args.phase_s <= 0.5:
        raise UserInputError("--rounds must be >= 1 and --phase-s > 0.5")
    rate_bytes = parse_bytes(args.rate_bytes)
    check_environment()
    config = IsolationConfig(rounds=args.rounds, phase_s=args.phase_s,
                             interval_s=args.interval_s,
                             load_tos=TOS_KV if args.load_class == "kv" else 0,
                             realtime=not args.no_realtime)
    spec = TestbedSpec((HostSpec("p0", HostRole.PREFILL, cnic_bytes_s=rate),
                        HostSpec("d0", HostRole.DECODE, cnic_bytes_s=rate)))
    with Testbed(spec) as tb:
        print(f"testbed up ({tb.prefix}*): measuring the shaped rate", file=sys.stderr)
        shaped = measure_rate(tb["p0"], tb["d0"], Network.COMPUTE, payload_bytes=rate_bytes,
                              warmup_bytes=max(1, rate_bytes // 10))
        print(f"isolation: {args.rounds} x ({args.phase_s} s idle + {args.phase_s} s loaded)",
              file=sys.stderr)
        result = measure_isolation(tb["p0"], tb["d0"], config)
    out: dict[str, Any] = {
        "benchmark": "isolation",
        "testbed": "netns",
        "link_rate_bytes_s": rate,
        "load_class": args.load_class,
        "rounds": args.rounds,
        "phase_s": args.phase_s,
        "probe_interval_s": args.interval_s,
        "rate_goodput_bytes_s": shaped.goodput_bytes_s,
        "rate_goodput_over_rate": shaped.goodput_bytes_s / rate,
        "rate_wire_over_payload": shaped.wire_over_payload,
        "rate_wire_over_rate": shaped.goodput_bytes_s * shaped.wire_over_payload / rate,
    }
    out.update(result.to_json())
    out["machine"] = machine_info()
    rows = [[name, cls.idle.p50_s * 1e3, cls.idle.p99_s * 1e3, cls.loaded.p50_s * 1e3,
             cls.loaded.p99_s * 1e3, cls.p99_ratio, cls.idle.count + cls.loaded.count,
             cls.idle.lost + cls.loaded.lost]
            for name, cls in result.classes.items()]
    print(format_table(["class", "idle_p50_ms", "idle_p99_ms", "loaded_p50_ms", "loaded_p99_ms",
                        "p99_ratio", "samples", "lost"], rows))
    print(f"link {rate * 8 / 1e6:.0f} Mbit/s: goodput {out['rate_goodput_over_rate']:.3f} of the "
          f"rate (wire {out['rate_wire_over_rate']:.3f}); loaded phases used "
          f"{result.load_utilisation:.3f} of the link; realtime probes: {result.realtime}")
    return out
