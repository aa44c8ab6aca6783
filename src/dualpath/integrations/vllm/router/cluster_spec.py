"""`ClusterSpec`: the vLLM instances a router fronts, as one JSON file.

    {"served_model_name": "smollm2", "model_dir": ".vllm-models/smollm2", "dtype": "float32",
     "block_tokens": 64, "store_path": "/mnt/kv", "run_dir": "/dev/shm/dualpath-vllm",
     "instances": [{"name": "prefill0", "role": "prefill", "node_id": 0,
                    "url": "http://10.0.0.1:8100", "relay": "tcp://10.0.0.1:7701"}, ...]}

`launch.py` writes it for the clusters it starts; for instances started by hand, write it
yourself. Validated on load (roles, unique names and nodes, URLs, relay addresses).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dualpath.core.errors import ConfigError


@dataclass(frozen=True)
class InstanceInfo:
    name: str
    role: str  # "prefill" | "decode"
    node_id: int
    url: str
    relay: str
    kv_capacity_tokens: int | None = None  # decode KV room; None = ask the instance

    def __post_init__(self) -> None:
        if self.role not in ("prefill", "decode"):
            raise ConfigError(f"instance {self.name}: role must be prefill or decode")
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"instance {self.name}: url must be http(s)://host:port")
        if not self.relay.startswith("tcp://"):
            raise ConfigError(f"instance {self.name}: relay must be tcp://host:port")
        if self.node_id < 0:
            raise ConfigError(f"instance {self.name}: node_id must be >= 0")


@dataclass(frozen=True)
class ClusterSpec:
    served_model_name: str
    model_dir: str
    dtype: str
    block_tokens: int
    store_path: str
    run_dir: str
    instances: tuple[InstanceInfo, ...]

    def __post_init__(self) -> None:
        names = [i.name for i in self.instances]
        if len(set(names)) != len(names):
            raise ConfigError("instance names must be unique")
        roles_of_node: dict[int, str] = {}
        for i in self.instances:
            if roles_of_node.setdefault(i.node_id, i.role) != i.role:
                raise ConfigError(f"node {i.node_id} mixes prefill and decode instances")
        if not self.of_role("prefill") or not self.of_role("decode"):
            raise ConfigError("a cluster needs at least one prefill and one decode instance")
        if self.block_tokens < 1:
            raise ConfigError("block_tokens must be >= 1")

    def of_role(self, role: str) -> tuple[InstanceInfo, ...]:
        return tuple(i for i in self.instances if i.role == role)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ClusterSpec:
        try:
            instances = tuple(InstanceInfo(**i) for i in data["instances"])
            fields = {k: v for k, v in data.items() if k != "instances"}
            return cls(instances=instances, **fields)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"cluster spec: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> ClusterSpec:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read cluster spec {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"cluster spec {path}: expected a JSON object")
        return cls.from_mapping(data)
