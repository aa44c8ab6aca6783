"""Which emulated NIC each engine opens: one SNIC per node (shared state file), one CNIC per
engine. The state files live in the cluster's run directory, so every engine process of a
node opens the same SNIC."""

from __future__ import annotations

import os

from dualpath.core.config import ClusterConfig
from dualpath.transfer.nic import NicSpec


def snic_spec(config: ClusterConfig, run_dir: str, node_id: int, *, free_io: bool) -> NicSpec:
    return NicSpec(
        name=f"snic{node_id}",
        path=os.path.join(run_dir, f"snic-{node_id}.nic"),
        bandwidth_bytes_s=None if free_io or config.nic_shaping == "kernel"
        else config.snic_bytes_s,
    )


def cnic_spec(config: ClusterConfig, run_dir: str, engine_id: int, *, free_io: bool) -> NicSpec:
    # Weighted round robin between the model-execution (high) and KV (low) classes.
    high = max(1, round(config.cnic_high_weight * 100))
    return NicSpec(
        name=f"cnic{engine_id}",
        path=os.path.join(run_dir, f"cnic-{engine_id}.nic"),
        bandwidth_bytes_s=None if free_io or config.nic_shaping == "kernel"
        else config.cnic_bytes_s,
        high_weight=high,
        low_weight=max(1, 100 - high),
    )
