"""Real networks on one machine: a multi-host cluster's storage and compute networks built
from Linux network namespaces, veth pairs, two bridges and `tc` HTB shaping (root only).

    from dualpath.testbed import Network, Testbed, TestbedSpec, TOS_MODEL

    with Testbed(TestbedSpec.cluster(prefill_nodes=1, decode_nodes=2)) as tb:
        fe, d0 = tb["fe"], tb["d0"]
        server = fe.popen(["dualpath", "serve", ...])      # runs inside fe's namespace
        d0.run(["ip", "addr"]).stdout                      # 10.231.0.5 / 10.232.0.5
        d0.counters()[Network.COMPUTE].rx_bytes            # kernel interface counters

Imports only `dualpath.core` and the standard library.
"""

from dualpath.testbed.commands import TestbedError, check_environment
from dualpath.testbed.host import Direction, Host, IfCounters, ShaperCounters
from dualpath.testbed.naming import PREFIX, cleanup_stale
from dualpath.testbed.shaping import (
    MODEL_SHARE,
    TOS_KV,
    TOS_MODEL,
    ClassCounters,
    KernelClass,
    classify_tos,
)
from dualpath.testbed.spec import (
    COMPUTE_SUBNET,
    STORAGE_SUBNET,
    HostRole,
    HostSpec,
    Network,
    TestbedSpec,
)
from dualpath.testbed.testbed import Testbed, down_all, environment_problem

__all__ = [
    "COMPUTE_SUBNET",
    "MODEL_SHARE",
    "PREFIX",
    "STORAGE_SUBNET",
    "TOS_KV",
    "TOS_MODEL",
    "ClassCounters",
    "Direction",
    "Host",
    "HostRole",
    "HostSpec",
    "IfCounters",
    "KernelClass",
    "Network",
    "ShaperCounters",
    "Testbed",
    "TestbedError",
    "TestbedSpec",
    "check_environment",
    "classify_tos",
    "cleanup_stale",
    "down_all",
    "environment_problem",
]
