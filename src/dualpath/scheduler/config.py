"""Scheduler configuration, the α/β helpers, and the `--system` -> config mapping.

α (DESIGN.md 3): the tokens a node can read from storage in 3 s — its storage (SNIC)
bandwidth divided by the model's KV bytes per token. A node whose read queue is at most α
would leave its SNIC idle soon, so its prefill engines are preferred (class C2).
β: the tokens one prefill engine can prefill in 5 s (from a profile); an engine above β is
overloaded (class C1) and gets no new work.
"""

from __future__ import annotations

from dataclasses import dataclass

from dualpath.core.errors import ConfigError
from dualpath.core.systems import SystemSpec

PLACEMENT_NAMES: tuple[str, ...] = ("round-robin", "dualpath")
READ_POLICY_NAMES: tuple[str, ...] = ("pe-only", "de-only", "round-robin", "shorter-queue", "split")

# The paper's windows (DESIGN.md 3): α covers 3 s of storage reads, β 5 s of prefill.
ALPHA_WINDOW_S = 3.0
BETA_WINDOW_S = 5.0
# The paper's margin over the balanced decode load (phase 2's Z).
Z_MARGIN = 1.05
# The paper's per-batch compute quota for prefill batch formation.
PREFILL_QUOTA_S = 0.3
# Storage holds Full Blocks of 64 tokens by default (contracts.md #2), so a split read is cut
# on a block boundary.
SPLIT_BLOCK_TOKENS = 64


def alpha_tokens(
    storage_bandwidth_bytes_s: float, kv_bytes_per_token: int, window_s: float = ALPHA_WINDOW_S
) -> int:
    """Tokens one node reads from storage in `window_s` (default 3 s): α."""
    if storage_bandwidth_bytes_s <= 0 or kv_bytes_per_token <= 0 or window_s <= 0:
        raise ConfigError("alpha_tokens: bandwidth, kv bytes per token and window must be > 0")
    return int(storage_bandwidth_bytes_s * window_s // kv_bytes_per_token)


def beta_tokens(prefill_tokens_per_s: float, window_s: float = BETA_WINDOW_S) -> int:
    """Tokens one prefill engine prefills in `window_s` (default 5 s): β."""
    if prefill_tokens_per_s <= 0 or window_s <= 0:
        raise ConfigError("beta_tokens: prefill tokens/s and window must be > 0")
    return int(prefill_tokens_per_s * window_s)


@dataclass(frozen=True)
class SchedulerConfig:
    """How the global scheduler decides.

    placement: "dualpath" (DESIGN.md 3: classes C1-C3 for prefill, two-phase decode) or
        "round-robin" (the baseline of basic / layerwise / dualpath-rr).
    read_policy: "pe-only" (basic, layerwise), "de-only" (`--read-path de`), "round-robin"
        (dualpath-rr: reads alternate PE side / DE side), "shorter-queue" (DESIGN.md 3), or
        "split" (beyond the paper, off by default: one request's read is divided so both
        queues end level).
    alpha_tokens, beta_tokens: α and β above (used by the dualpath placement only).
    z_margin: phase-2 margin over the balanced decode load (paper: 1.05).
    quota_s: prefill batch compute quota (paper: 300 ms); read by engines that form batches.
    split_block_tokens: granularity of a split read (a storage block).
    """

    placement: str = "dualpath"
    read_policy: str = "shorter-queue"
    alpha_tokens: int = 1 << 62
    beta_tokens: int = 1 << 62
    z_margin: float = Z_MARGIN
    quota_s: float = PREFILL_QUOTA_S
    split_block_tokens: int = SPLIT_BLOCK_TOKENS

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENT_NAMES:
            raise ConfigError(
                f"unknown placement policy {self.placement!r}; choose one of: "
                f"{', '.join(PLACEMENT_NAMES)}"
            )
        if self.read_policy not in READ_POLICY_NAMES:
            raise ConfigError(
                f"unknown read policy {self.read_policy!r}; choose one of: "
                f"{', '.join(READ_POLICY_NAMES)}"
            )
        if self.alpha_tokens < 0 or self.beta_tokens < 0:
            raise ConfigError("alpha_tokens and beta_tokens must be >= 0")
        if self.z_margin < 1.0:
            raise ConfigError(f"z_margin must be >= 1, got {self.z_margin}")
        if self.quota_s <= 0:
            raise ConfigError(f"quota_s must be > 0, got {self.quota_s}")
        if self.split_block_tokens < 1:
            raise ConfigError("split_block_tokens must be >= 1")

    @property
    def split_reads(self) -> bool:
        """True when the beyond-the-paper split read policy is on."""
        return self.read_policy == "split"


def scheduler_config_for_system(
    spec: SystemSpec,
    *,
    alpha_tokens: int = 1 << 62,
    beta_tokens: int = 1 << 62,
    read_path: str = "auto",
    split_reads: bool = False,
    quota_s: float = PREFILL_QUOTA_S,
    z_margin: float = Z_MARGIN,
) -> SchedulerConfig:
    """The scheduler config of one `--system` rung (`dualpath.core.systems.system_spec`).

    read_path is `--read-path`: "pe" / "de" force a side; "auto" means PE-only for systems
    without `dual_path`; with it, the side alternates (round robin) under the round-robin
    placement (`dualpath-rr`: no load awareness, DESIGN.md 6), else the shorter queue wins;
    `split_reads` (beyond the paper) replaces either with "split".
    """
    if read_path == "pe":
        policy = "pe-only"
    elif read_path == "de":
        policy = "de-only"
    elif read_path == "auto" and not spec.dual_path:
        policy = "pe-only"
    elif read_path == "auto" and split_reads:
        policy = "split"
    elif read_path == "auto" and spec.placement == "round-robin":
        policy = "round-robin"
    elif read_path == "auto":
        policy = "shorter-queue"
    else:
        raise ConfigError(f"unknown read path {read_path!r}; choose one of: auto, pe, de")
    return SchedulerConfig(
        placement=spec.placement,
        read_policy=policy,
        alpha_tokens=alpha_tokens,
        beta_tokens=beta_tokens,
        z_margin=z_margin,
        quota_s=quota_s,
    )
