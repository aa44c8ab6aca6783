"""Configuration of a local DualPath cluster (`dualpath serve`, `dualpath bench storage-bound`).

`ClusterConfig` is frozen; it is built from defaults, then an optional TOML/JSON config file,
then command-line flags (later wins). Every engine process receives the whole config as JSON
on its command line, so a cluster is fully described by one object.

Bandwidths are bytes per second; `None` means unlimited (still counted). The defaults model a
node the way the paper's testbed does in ratio: one SNIC per node, and per engine a CNIC.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from dualpath.core.errors import ConfigError
from dualpath.core.systems import READ_PATH_MODES, system_spec
from dualpath.core.units import parse_bytes


@dataclass(frozen=True)
class ClusterConfig:
    """Everything a local cluster needs. Derived values are properties."""

    model: str = "smollm2"
    model_seed: int = 0
    # How the engines run the model: activations/KV dtype, weight-only quantization, and
    # torch intra-op threads per engine process (an engine stands for one GPU).
    dtype: str = "float32"
    quantization: str = "none"
    threads: int = 1
    prefill_nodes: int = 1
    decode_nodes: int = 2
    engines_per_node: int = 1
    block_size: int = 64
    store_path: str = "./kvstore"
    use_kv_store: bool = True
    # Capacity of the KV store root in bytes (None = unbounded): least recently used leaf
    # blocks are evicted to stay under it (`FileKVStore(max_bytes=...)`).
    store_max_bytes: int | None = None
    system: str = "dualpath"
    read_path: str = "auto"
    # Emulated NICs (bytes/s; None = unlimited). SNIC: one per node, shared by its engines.
    snic_bytes_s: float | None = None
    # CNIC: one per engine. Two classes: model-execution traffic (high) and KV (low).
    cnic_bytes_s: float | None = None
    cnic_high_weight: float = 0.99
    # "software": the engines pace every byte on emulated NICs at the rates above (one host);
    # "kernel": the rates only inform the scheduler (α), the network enforces them (the netns
    # testbed's tc shaping, or real NICs).
    nic_shaping: str = "software"
    # KV transfers between engines: "zmq" (TCP over the compute network, CURVE-encrypted) or
    # "mooncake" (Mooncake's transfer engine writes the payload into the receiver's
    # registered arena; its control messages still go over CURVE-authenticated zmq).
    transfer: str = "zmq"
    # Mooncake's protocol ("tcp" anywhere, "rdma" on RDMA NICs), its device (e.g. mlx5_0;
    # "" lets Mooncake choose) and each engine's receive arena (bytes).
    mooncake_protocol: str = "tcp"
    mooncake_device: str = ""
    mooncake_arena_bytes: int = 256 << 20
    # Synthetic model-execution collective traffic: bytes per prefill token per layer that
    # an expert-parallel all-to-all would move (high-priority CNIC class; 0 = none).
    collective_bytes_per_token: int = 0
    # A prefill waiting for KV from a peer gives up after this long (peer presumed dead).
    peer_timeout_s: float = 60.0
    # An engine that has waited this long for a request's KV from its peer (PE: the DE's
    # hit-KV notice; DE: the PE's KV, since the last message of it) reports the transfer as
    # failed, so the scheduler re-runs the request. Generous: a busy peer's queue of earlier
    # requests delays the KV legitimately.
    kv_wait_timeout_s: float = 600.0
    # After a failed KV send to a peer, later sends to it fail at once for this long (a dead
    # peer is noticed by the scheduler within a fraction of a second and gets no new work);
    # then the peer is tried again, so one timeout of a live peer does not cut the pair off.
    peer_retry_after_s: float = 2.0
    # Host DRAM buffers per engine (bytes).
    pe_buffer_bytes: int = 1 << 30
    de_buffer_bytes: int = 1 << 30
    # Decode engine KV pool ("HBM") per engine, in bytes (rounded down to whole blocks).
    decode_kv_bytes: int = 1 << 30
    # Prefill batch formation (DESIGN.md section 3): compute quota per step.
    prefill_quota_s: float = 0.3
    max_decode_batch: int = 64
    # Admission: requests queued in the scheduler beyond this are refused (HTTP 429).
    max_waiting_requests: int = 1024
    # Admission: requests handed to the cluster at once (vLLM's --max-num-seqs); the rest
    # wait in the server's queue (at most max_waiting_requests of them).
    max_running_requests: int = 256
    host: str = "127.0.0.1"  # the public HTTP API
    port: int = 8000
    # The internal plane (engine control and KV data) binds here, never on the public host.
    internal_host: str = "127.0.0.1"
    # The scheduler's control port that engines and `dualpath node` agents connect to
    # (0 = any free port; remote nodes need a fixed one).
    control_port: int = 0
    # File holding the cluster secret every internal key derives from (mode 0600); None = a
    # fresh one in the run directory (a purely local cluster).
    cluster_secret_path: str | None = None
    # Start the configured nodes as local engine processes (False: remote nodes join).
    local_engines: bool = True
    # Accept `dualpath node --join` agents while running.
    accept_nodes: bool = False
    # An engine silent for this long (no report at all; stats go out every 0.5 s) is dead.
    engine_heartbeat_timeout_s: float = 10.0
    # Engine ids are < this bound (it bounds the key table of the internal plane).
    max_engines: int = 1024
    api_key: str | None = None
    served_model_name: str | None = None
    engine_start_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.nic_shaping not in ("software", "kernel"):
            raise ConfigError(f"nic_shaping must be software or kernel, got {self.nic_shaping!r}")
        if self.transfer not in ("zmq", "mooncake"):
            raise ConfigError(f"transfer must be zmq or mooncake, got {self.transfer!r}")
        if self.mooncake_protocol not in ("tcp", "rdma"):
            raise ConfigError(f"mooncake_protocol must be tcp or rdma, got "
                              f"{self.mooncake_protocol!r}")
        if self.mooncake_arena_bytes < 1 << 20:
            raise ConfigError("mooncake_arena_bytes must be at least 1 MiB")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.quantization not in ("none", "int8", "int4"):
            raise ConfigError(f"quantization must be none, int8 or int4, got "
                              f"{self.quantization!r}")
        for name in ("prefill_nodes", "decode_nodes", "engines_per_node", "block_size", "threads",
                     "decode_kv_bytes", "max_decode_batch", "max_waiting_requests",
                     "max_running_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        system_spec(self.system)  # raises with the list of valid names
        if self.read_path not in READ_PATH_MODES:
            raise ConfigError(
                f"read_path must be one of {', '.join(READ_PATH_MODES)}, got {self.read_path!r}"
            )
        for name in ("snic_bytes_s", "cnic_bytes_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive (or omitted for unlimited)")
        if not 0.0 < self.cnic_high_weight < 1.0:
            raise ConfigError("cnic_high_weight must be in (0, 1)")
        for name in ("port", "control_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name} must be in [0, 65535], got {getattr(self, name)}")
        if self.engine_heartbeat_timeout_s <= 0:
            raise ConfigError("engine_heartbeat_timeout_s must be positive")
        if not self.local_engines and not self.accept_nodes:
            raise ConfigError("a cluster without local engines must accept remote nodes")
        if self.num_engines > self.max_engines:
            raise ConfigError(f"{self.num_engines} engines exceed max_engines={self.max_engines}")
        if isinstance(self.store_max_bytes, str):  # "2GB" in a config file
            object.__setattr__(self, "store_max_bytes", parse_bytes(self.store_max_bytes))
        if self.store_max_bytes is not None and self.store_max_bytes < 1:
            raise ConfigError(f"store_max_bytes must be positive, got {self.store_max_bytes}")
        if self.prefill_quota_s <= 0:
            raise ConfigError("prefill_quota_s must be positive")

    @property
    def num_nodes(self) -> int:
        return self.prefill_nodes + self.decode_nodes

    @property
    def num_engines(self) -> int:
        return self.num_nodes * self.engines_per_node

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClusterConfig:
        return cls.from_mapping(json.loads(text), source="<json>")

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str) -> ClusterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path | None, **overrides: Any) -> ClusterConfig:
        """Defaults <- config file (TOML or JSON) <- non-None overrides."""
        data: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file {p} does not exist")
            try:
                text = p.read_text()
                data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
            except (ValueError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"config file {p}: cannot parse: {exc}") from None
        base = cls.from_mapping(data, source=str(path or "defaults"))
        changes = {k: v for k, v in overrides.items() if v is not None}
        return replace(base, **changes) if changes else base
