"""`dualpath node`: start this host's engines and join them to a running `dualpath serve`.

On the scheduler's host:   dualpath serve --accept-nodes --internal-host 10.0.0.1 \\
                               --control-port 7000 --cluster-secret /etc/dualpath/secret
On every other host:       dualpath node --join 10.0.0.1:7000 --role decode \\
                               --internal-host 10.0.0.2 --cluster-secret /etc/dualpath/secret

The secret file (created by serve, mode 0600) must be copied to every host; without it a
process cannot connect to any internal port.
"""

from __future__ import annotations

import argparse
import signal
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("node", help="join this host's engines to a running scheduler",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--join", required=True, metavar="HOST:PORT",
                   help="the scheduler's control plane (serve --internal-host/--control-port)")
    p.add_argument("--role", required=True, choices=["prefill", "decode"])
    p.add_argument("--engines", type=int, default=1, help="engines on this node (default 1)")
    p.add_argument("--cluster-secret", required=True, metavar="FILE",
                   help="the cluster secret serve created (mode 0600)")
    p.add_argument("--internal-host", default="127.0.0.1",
                   help="this host's address on the compute network (engines bind here)")
    p.add_argument("--store-path", default=None,
                   help="this host's path of the shared KV store (default: the scheduler's)")
    p.add_argument("--mooncake-device", default=None, metavar="NAME",
                   help="this host's RDMA device when the cluster runs --transfer mooncake "
                        "--mooncake-protocol rdma (default: the scheduler's setting)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dualpath.core.errors import UserInputError
    from dualpath.runtime.node_agent import NodeAgent, NodeOptions

    host, sep, port = args.join.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserInputError(f"--join must be HOST:PORT, got {args.join!r}")
    if not 1 <= args.engines <= 64:
        raise UserInputError("--engines must be in [1, 64]")
    agent = NodeAgent(NodeOptions(args.join, args.role, args.engines, args.cluster_secret,
                                  args.internal_host, args.store_path,
                                  args.mooncake_device))
    signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
    print(f"joining {args.join} as a {args.role} node of {args.engines} engine(s) ...",
          flush=True)
    agent.run()
    return 0
