"""`SimConfig`: everything one simulation run depends on (frozen; a run is a pure function
of its config and its workload)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dualpath.core.errors import UserInputError
from dualpath.core.systems import SYSTEM_NAMES


def parse_pd(text: str) -> tuple[int, int]:
    """'2P4D' -> (2, 4): prefill nodes, decode nodes."""
    m = re.fullmatch(r"\s*(\d+)\s*[pP]\s*(\d+)\s*[dD]\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise UserInputError(f"--pd must look like 2P4D (x prefill nodes, y decode nodes), got {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class SimConfig:
    """One simulation run.

    pd: (prefill nodes, decode nodes). mode: "offline" (every agent starts at 0) or "online"
    (agents arrive as a Poisson process at `aps` agents/s). read_path / split_reads: as
    `serve`'s flags. sched_interval_s: the least time between two scheduler calls (a call
    happens only when something changed). read_slots_per_node: concurrent storage reads a
    node's SNIC serves (FIFO beyond that). block_tokens: storage block (cached prefixes
    are whole blocks). timeline_bin_s: NIC utilization sampling (None: off).
    log_decisions: keep every placement; record_scheduler_inputs: keep every call's (waiting
    queue, ClusterView), so the decisions can be replayed through another scheduler.
    alpha_tokens / beta_tokens / de_kv_capacity_tokens: optional overrides (None: derived
    from the hardware and model cost, the default) of α, β and the KV room of each decode
    engine in tokens, so a run can be set up exactly like a measured runtime cluster (the
    runtime-vs-simulator agreement test uses them).
    ep_group_gpus: (prefill, decode) GPUs per expert-parallel group, overriding the model
    preset's deployment unit (None: the preset's). prefill_batch_requests: at most this many
    requests per prefill forward (None: as many as the compute quota admits; 1 models an
    engine that runs a batch's requests one after another, as our runtime's PE does).
    block_header_bytes: bytes a stored block carries beyond its KV, moved over the SNIC by
    every read and persist of it (our file store: a header rounded up to a 4 KiB page,
    `kv.block_file.payload_offset`, 8.3 % of a 64-token block of the tiny model); 0 = none
    (the GPU presets: the paper's store format is not published).
    """

    model: str = "ds-660b"
    hardware: str | None = None
    system: str = "dualpath"
    pd: tuple[int, int] = (2, 4)
    mode: str = "offline"
    aps: float = 1.0
    seed: int = 0
    read_path: str = "auto"
    split_reads: bool = False
    sched_interval_s: float = 0.1
    read_slots_per_node: int = 8
    block_tokens: int = 64
    timeline_bin_s: float | None = 10.0
    log_decisions: bool = False
    record_scheduler_inputs: bool = False
    max_sim_s: float = float("inf")
    alpha_tokens: int | None = None
    beta_tokens: int | None = None
    de_kv_capacity_tokens: int | None = None
    ep_group_gpus: tuple[int, int] | None = None
    prefill_batch_requests: int | None = None
    block_header_bytes: int = 0

    def __post_init__(self) -> None:
        if self.system not in SYSTEM_NAMES:
            raise UserInputError(f"unknown system {self.system!r}; choose one of: {', '.join(SYSTEM_NAMES)}")
        if self.mode not in ("offline", "online"):
            raise UserInputError(f"mode must be offline or online, got {self.mode!r}")
        if self.mode == "online" and self.aps <= 0:
            raise UserInputError(f"--aps must be > 0, got {self.aps}")
        if self.read_path not in ("auto", "pe", "de"):
            raise UserInputError(f"--read-path must be auto, pe or de, got {self.read_path!r}")
        if self.pd[0] < 1 or self.pd[1] < 1:
            raise UserInputError("need at least one prefill and one decode node")
        if self.sched_interval_s < 0:
            raise UserInputError(f"--sched-interval must be >= 0 seconds, got {self.sched_interval_s}")
        if self.read_slots_per_node < 1 or self.block_tokens < 1:
            raise UserInputError("read_slots_per_node and block_tokens must be >= 1")
        if self.block_header_bytes < 0:
            raise UserInputError(f"block_header_bytes must be >= 0, got {self.block_header_bytes}")
        if self.prefill_batch_requests is not None and self.prefill_batch_requests < 1:
            raise UserInputError("prefill_batch_requests must be >= 1 (or None)")
        if self.ep_group_gpus is not None and min(self.ep_group_gpus) < 1:
            raise UserInputError(f"ep_group_gpus must be >= 1 GPU per role, got {self.ep_group_gpus}")
        for name in ("alpha_tokens", "beta_tokens", "de_kv_capacity_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserInputError(f"{name} must be >= 1 (or None to derive it), got {value}")
