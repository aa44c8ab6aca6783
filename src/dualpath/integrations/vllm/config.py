"""`ConnectorConfig`: the DualPath connector's settings, from vLLM's `kv_connector_extra_config`.

Example (`--kv-transfer-config` of a decode instance)::

    {"kv_connector": "DualPathConnector",
     "kv_connector_module_path": "dualpath.integrations.vllm.connector",
     "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
     "kv_connector_extra_config": {
        "dualpath_role": "decode", "store_path": "/mnt/kv", "relay_bind": "tcp://10.0.0.2:7701",
        "run_dir": "/dev/shm/dualpath-vllm", "node_id": 1,
        "snic_bytes_s": 50e6, "cnic_bytes_s": 400e6, "buffer_bytes": 1073741824}}

Unknown keys are refused (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from dualpath.core.errors import ConfigError


@dataclass(frozen=True)
class ConnectorConfig:
    """Settings of one DualPath connector (one vLLM instance).

    dualpath_role: "prefill" (P) or "decode" (D).
    store_path: the KV store (a directory or a redis:// URL, `dualpath.kv.open_store`),
        shared by every instance and the router.
    block_tokens: tokens per stored block; must equal vLLM's `--block-size`.
    relay_bind: where the instance's relay listens (tcp://host:port; port 0 = any).
    run_dir: directory of the shared NIC, read-queue and statistics files.
    node_id: the node (SNIC) this instance belongs to; instances of one node share its SNIC.
    instance: a name for this instance's statistics file (default "<role><node_id>").
    snic_bytes_s / cnic_bytes_s: emulated storage / compute NIC rates (None = unlimited).
    buffer_bytes: the host buffer (P: PE-path reads; D: prompt KV and the DE-path hit).
    *_timeout_s: how long to wait for the peer before giving the relay up (both recompute).
    io_threads: concurrent store reads / writes.
    """

    dualpath_role: str
    store_path: str
    run_dir: str
    relay_bind: str = "tcp://127.0.0.1:0"
    node_id: int = 0
    instance: str = ""
    block_tokens: int = 64
    snic_bytes_s: float | None = None
    cnic_bytes_s: float | None = None
    buffer_bytes: int = 1 << 30
    # Generous: a request may wait behind many others on its peer (P's queue, D's reads); a
    # peer that fails is noticed by the router (its HTTP answer fails), which cancels the
    # other side's request. These only end a relay lost while both instances live.
    ready_timeout_s: float = 3600.0
    layer_timeout_s: float = 60.0
    kv_wait_timeout_s: float = 3600.0
    send_timeout_s: float = 30.0
    io_threads: int = 4

    def __post_init__(self) -> None:
        if self.dualpath_role not in ("prefill", "decode"):
            raise ConfigError("kv_connector_extra_config.dualpath_role must be 'prefill' or "
                              f"'decode', got {self.dualpath_role!r}")
        for name in ("store_path", "run_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"kv_connector_extra_config.{name} must be a non-empty path")
        if not self.relay_bind.startswith("tcp://"):
            raise ConfigError(f"relay_bind must be tcp://host:port, got {self.relay_bind!r}")
        if self.node_id < 0 or self.block_tokens < 1 or self.buffer_bytes < 1:
            raise ConfigError("node_id must be >= 0, block_tokens and buffer_bytes >= 1")
        for name in ("snic_bytes_s", "cnic_bytes_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive or null (unlimited)")
        for name in ("ready_timeout_s", "layer_timeout_s", "kv_wait_timeout_s", "send_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.io_threads < 1:
            raise ConfigError("io_threads must be >= 1")

    @property
    def instance_name(self) -> str:
        return self.instance or f"{self.dualpath_role}{self.node_id}"

    def stats_path(self) -> str:
        return os.path.join(self.run_dir, f"stats-{self.instance_name}.counters")

    def cnic_path(self) -> str:
        return os.path.join(self.run_dir, f"cnic-{self.instance_name}.nic")

    @classmethod
    def from_extra_config(cls, extra: Mapping[str, Any]) -> ConnectorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ConfigError(f"kv_connector_extra_config: unknown key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        try:
            return cls(**dict(extra))
        except TypeError as exc:
            raise ConfigError(f"kv_connector_extra_config: {exc}") from None
