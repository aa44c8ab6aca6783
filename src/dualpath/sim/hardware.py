"""The cluster hardware the simulator models, loaded from a JSON preset or file.

Presets live in `dualpath/sim/presets/*.json`; every number there carries a `_<field>` note
saying where it comes from. `--hardware FILE` accepts the same format (missing fields take
the testbed preset's values).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from dualpath.core.errors import ConfigError

DEFAULT_HARDWARE = "hopper-testbed"
PROFILE_FIELDS = ("prefill_context_token_s", "prefill_new_token_s", "prefill_attention_pair_s",
                  "decode_seq_s", "decode_context_token_s", "turn_gap_s", "host_cores",
                  "de_kv_cpu_s_per_byte", "de_persist_cpu_s_per_byte",
                  "frontend_cpu_s_per_token", "frontend_cpu_s_per_turn",
                  "engine_read_cpu_s_per_byte", "engine_send_cpu_s_per_byte")


@dataclass(frozen=True)
class HardwareSpec:
    """Per-GPU, per-node and cluster-wide bandwidths and capacities (SI units)."""

    name: str
    gpus_per_node: int
    gpu_fp8_flops: float
    gpu_bf16_flops: float
    hbm_bytes: float
    hbm_bytes_s: float
    cnic_bytes_s: float
    snic_bytes_s: float
    nic_efficiency: float
    dram_bytes_s: float
    pcie_bytes_s: float
    dram_buffer_bytes: float
    storage_aggregate_bytes_s: float
    cnic_hi_weight: float
    prefill_mfu: float
    decode_mbu: float
    decode_mfu: float
    prefill_batch_overhead_s: float
    decode_step_overhead_s: float
    hbm_reserve_fraction: float
    dram_buffer_bytes_by_model: tuple[tuple[str, float], ...] = field(default=())
    # A profiled engine instead of the roofline (`CostModel`): measured per-token costs of
    # one engine on one machine (e.g. our PyTorch runtime on CPU). 0 = not profiled.
    # prefill forward of chunks (c context, n new tokens): overhead + Σ (c x ctx + n x new
    # + pairs(c, n) x pair), pairs = n x c + n (n + 1) / 2 the query-key pairs of causal
    # attention (`cost.attention_pairs`): attention grows with new x context, not either alone.
    prefill_context_token_s: float = 0.0
    prefill_new_token_s: float = 0.0
    prefill_attention_pair_s: float = 0.0
    # decode step: overhead + batch x seq + Σ context x ctx-token.
    decode_seq_s: float = 0.0
    decode_context_token_s: float = 0.0
    # Time between a turn's last token and the agent's next turn reaching the scheduler
    # (client and front-end work: building and hashing the next prompt); 0 = none.
    turn_gap_s: float = 0.0
    # CPU cores every engine of the cluster shares, in engines' worth (profiled engines of one
    # host: cores / `ClusterConfig.threads`); a computing engine runs at min(1, cores /
    # computing engines) of its profiled speed (`sim.cpu`). 0 = each engine has its own device.
    host_cores: float = 0.0
    # CPU a decode engine on such a host spends moving a turn's KV, per byte: its prompt's
    # KV into the paged cache (received or from its buffer) and the whole blocks it persists.
    # Counted on the shared cores like compute (`sim.cpu`); 0 = not modelled (GPU presets:
    # DMA engines and NICs move KV, not the host's cores).
    de_kv_cpu_s_per_byte: float = 0.0
    de_persist_cpu_s_per_byte: float = 0.0
    # CPU the front end (the scheduler process and the client, on the same host) spends per
    # streamed token and per turn, competing with the engines for the shared cores
    # (`sim.cpu`); 0 = not modelled (GPU presets: the front end has cores of its own).
    frontend_cpu_s_per_token: float = 0.0
    frontend_cpu_s_per_turn: float = 0.0
    # CPU an engine on such a host spends per byte of KV it reads from the store and per byte
    # it sends over the CNIC (its reader and sender threads), on the shared cores; 0 = not
    # modelled (GPU presets: DMA engines and NICs move KV).
    engine_read_cpu_s_per_byte: float = 0.0
    engine_send_cpu_s_per_byte: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int | float) and not isinstance(v, bool) and v <= 0 and f.name not in (
                "prefill_batch_overhead_s", "decode_step_overhead_s", "hbm_reserve_fraction",
                *PROFILE_FIELDS,
            ):
                raise ConfigError(f"hardware {self.name!r}: {f.name} must be positive, got {v}")
        for name in ("nic_efficiency", "prefill_mfu", "decode_mbu", "decode_mfu", "cnic_hi_weight"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"hardware {self.name!r}: {name} must be in (0, 1]")
        for name in PROFILE_FIELDS:
            if getattr(self, name) < 0:
                raise ConfigError(f"hardware {self.name!r}: {name} must be >= 0")

    @property
    def profiled_prefill(self) -> bool:
        return self.prefill_new_token_s > 0

    @property
    def profiled_decode(self) -> bool:
        return self.decode_seq_s > 0 or self.decode_context_token_s > 0

    @property
    def snic_goodput_bytes_s(self) -> float:
        return self.snic_bytes_s * self.nic_efficiency

    @property
    def cnic_goodput_bytes_s(self) -> float:
        """A GPU's KV lane: its CNIC, also bounded by its PCIe link to host DRAM."""
        return min(self.cnic_bytes_s, self.pcie_bytes_s) * self.nic_efficiency

    def flops(self, dtype: str) -> float:
        return self.gpu_fp8_flops if dtype == "fp8" else self.gpu_bf16_flops

    def buffer_bytes_for(self, model_name: str) -> float:
        return dict(self.dram_buffer_bytes_by_model).get(model_name, self.dram_buffer_bytes)

    def snic_share_bytes_s(self, num_nodes: int) -> float:
        """One node's storage read rate: its SNIC, or its share of the storage aggregate."""
        return min(self.snic_goodput_bytes_s, self.storage_aggregate_bytes_s / max(1, num_nodes))


def _from_dict(raw: dict[str, Any], base: dict[str, Any] | None = None) -> HardwareSpec:
    data = {k: v for k, v in (base or {}).items() if not k.startswith("_")}
    data.update({k: v for k, v in raw.items() if not k.startswith("_")})
    known = {f.name for f in fields(HardwareSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"hardware file: unknown field(s) {', '.join(unknown)}")
    missing = sorted(known - set(data) - {"dram_buffer_bytes_by_model", *PROFILE_FIELDS})
    if missing:
        raise ConfigError(f"hardware file: missing field(s) {', '.join(missing)}")
    by_model = data.get("dram_buffer_bytes_by_model", {})
    data["dram_buffer_bytes_by_model"] = tuple(sorted((str(k), float(v)) for k, v in dict(by_model).items()))
    try:
        return HardwareSpec(**data)
    except TypeError as exc:
        raise ConfigError(f"hardware file: {exc}") from None


def hardware_from_dict(raw: dict[str, Any]) -> HardwareSpec:
    """A hardware object from a file's JSON object; missing fields come from the testbed."""
    data = dict(raw)
    data.setdefault("name", "custom")
    return _from_dict(data, _preset_dict(DEFAULT_HARDWARE))


def _preset_dict(name: str) -> dict[str, Any]:
    try:
        text = resources.files("dualpath.sim").joinpath("presets", f"{name}.json").read_text()
    except FileNotFoundError:
        raise ConfigError(f"unknown hardware preset {name!r}; presets: {', '.join(hardware_presets())}") from None
    return dict(json.loads(text))


def hardware_presets() -> list[str]:
    folder = resources.files("dualpath.sim").joinpath("presets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_hardware(name_or_path: str | None = None) -> HardwareSpec:
    """A preset name (see `hardware_presets()`) or a JSON file path; None = the testbed.

    Presets and files may give only some fields; the rest come from the testbed preset.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_HARDWARE
    path = Path(name_or_path)
    base = _preset_dict(DEFAULT_HARDWARE)
    if path.suffix == ".json" or path.exists():
        try:
            raw = json.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read hardware file {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"hardware file {path} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"hardware file {path}: expected a JSON object")
        raw.setdefault("name", path.stem)
        return _from_dict(raw, base)
    return _from_dict(_preset_dict(name_or_path), base)
