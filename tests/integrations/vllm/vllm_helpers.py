"""Helpers of the vLLM integration tests (HTTP calls, the running cluster's counters)."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualpath.integrations.vllm.launch import LaunchConfig, RouterProcess, VllmCluster


def post(url: str, body: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return str(resp.read().decode())


@dataclass
class VllmTestCluster:
    cluster: VllmCluster
    cfg: LaunchConfig
    routers: dict[str, RouterProcess]
    work: Path

    @property
    def plain_url(self) -> str:
        return self.cluster.of_role("plain")[0].url

    def stats(self) -> dict[str, dict[str, float]]:
        from dualpath.integrations.vllm.resources import InstanceStats

        out = {}
        for s in self.cluster.specs:
            path = Path(self.cfg.run_dir) / f"stats-{s.name}.counters"
            if path.exists():
                st = InstanceStats(path)
                out[s.name] = st.snapshot()
                st.close()
        return out

    def snic_rx_bytes(self) -> dict[str, float]:
        """Bytes each instance's node SNIC received (storage reads), from the NIC files."""
        from dualpath.integrations.vllm.resources import NodeFiles, open_snic

        out = {}
        for s in self.cluster.specs:
            if s.role == "plain":
                continue
            nic = open_snic(NodeFiles(self.cfg.run_dir, s.node_id), None)
            out[s.name] = nic.stats().flat()["rx.kv.bytes"]
            nic.close()
        return out
