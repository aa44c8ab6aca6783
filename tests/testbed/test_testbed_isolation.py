"""The two kernel classes are real: while a KV bulk stream saturates a compute path, MODEL
probes (TOS EF) keep their idle round-trip time and KV / unmarked probes queue behind the bulk.

Both places the kernel shapes are checked: the sender's TX (d0 -> p0: d0's CNIC is the
tighter) and the receiver's RX on the bridge-side peer (p0 -> d0: p0's TX allows twice d0's
RX). `dualpath bench isolation` measures the same with longer phases and reports the figures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dualpath.testbed import HostRole, HostSpec, Testbed, TestbedSpec
from dualpath.testbed.isolation import IsolationConfig, measure_isolation

RATE = 12.5e6
SPEC = TestbedSpec((HostSpec("p0", HostRole.PREFILL, cnic_bytes_s=2 * RATE),
                    HostSpec("d0", HostRole.DECODE, cnic_bytes_s=RATE)))
# MODEL p99 loaded / idle: the goal, 1.2. Short runs on a shared 2-core machine met it in 14
# of 14 (0.64-1.12, probes pinned to one CPU and the bulk stream to the other, all under
# SCHED_FIFO); a CPU stall of a few ms can still land in one condition only, so a run that
# misses is measured once more. Without isolation the ratio is ~40 in both runs (MODEL
# probes then queue behind the KV backlog like the KV probes do).
P99_RATIO_BOUND = 1.2
ATTEMPTS = 2
CONFIG = IsolationConfig(rounds=2, phase_s=1.0, settle_s=0.25)


@pytest.fixture(scope="module")
def tb(netns_ok: None) -> Iterator[Testbed]:
    with Testbed(SPEC) as testbed:
        yield testbed


@pytest.mark.parametrize(("src", "dst"), [("d0", "p0"), ("p0", "d0")], ids=["tx", "rx"])
def test_model_probes_keep_their_latency_while_kv_saturates_the_link(tb, src, dst) -> None:
    runs = []
    for _ in range(ATTEMPTS):
        result = measure_isolation(tb[src], tb[dst], CONFIG)
        model, kv, unmarked = (result.classes[k] for k in ("model", "kv", "unmarked"))
        figures = (f"{src}->{dst}: utilisation {result.load_utilisation:.2f}; model p99 idle "
                   f"{model.idle.p99_s * 1e3:.3f} ms, loaded {model.loaded.p99_s * 1e3:.3f} ms "
                   f"(x{model.p99_ratio:.2f}); kv loaded p50 {kv.loaded.p50_s * 1e3:.2f} ms; "
                   f"unmarked loaded p50 {unmarked.loaded.p50_s * 1e3:.2f} ms")
        print(figures)
        runs.append(figures)
        assert result.realtime, "probes did not get SCHED_FIFO"
        assert result.load_utilisation >= 0.85, figures  # the bulk stream saturated the link
        assert min(model.idle.count, model.loaded.count, kv.loaded.count) >= 40, figures
        assert model.idle.lost == model.loaded.lost == 0, figures
        # the unprotected classes wait behind the KV backlog: a queue of milliseconds ...
        for suffering in (kv, unmarked):
            assert suffering.loaded.p50_s >= 2e-3, figures
            assert suffering.loaded.p50_s >= 5 * model.loaded.p99_s, figures
        # ... which MODEL skips
        if model.p99_ratio <= P99_RATIO_BOUND:
            return
    pytest.fail(f"MODEL p99 loaded/idle above {P99_RATIO_BOUND} in every run:\n" + "\n".join(runs))
