"""The global scheduler of DualPath — pure: state and time come in, decisions go out.

Shared verbatim by the runtime's scheduler process and the discrete-event simulator, so it
imports no torch, no asyncio, no sockets and reads no clock (DESIGN.md 3, STYLE.md).

The algorithm (DESIGN.md section 3; token counts are the load proxy throughout):

- **Engine model.** Engines are grouped by node (a group is all prefill or all decode). The
  caller reports per engine `seq_e` / `tok_e` / free KV memory and per node the storage read
  queue `read_q` (tokens) in a `ClusterView`.
- **PE selection** (`prefill_select`): classes C1 (`tok_e > β`, nothing), C2 (`read_q <= α`),
  C3 (`read_q > α`); each waiting request in FIFO order goes to the C2 engine with the least
  `tok_e`, else the C3 one; stop when C2 and C3 are empty.
- **DE selection** (`decode_select`): phase 1 routes each request to the decode group with the
  smallest Σ`tok_e`; phase 2 picks inside the group with the HBM-fit set R and the margin
  Z = 1.05 x (Σ_R len + Σ tok_e)/|E|: fewest `seq_e` among engines staying under Z, else the
  least `tok_e`; a group with no room stops.
- **Read path** (`read_path`): the side (chosen PE's node or chosen DE's node) with the
  shorter read queue; "pe-only" and "de-only" for the baselines and forced modes; "split"
  (beyond the paper, off by default) divides one read so both queues end level.
- Each decision is charged to the call's scratch counters (`virtual`) — PE `tok_e`/`seq_e`,
  DE `tok_e`/`seq_e`/free KV, the chosen node's `read_q` — so later decisions in the same call
  see it (`dualpath_policy` lists the exact order).
- **Baselines** (`round_robin`): PE and DE in turn (DEs without room skipped).
- **Batch formation** (`batching`, `predictor`): FIFO packing under a compute quota (300 ms)
  with the overflowing request chunked by binary search, time predicted from attention FLOPs.
- **α, β** (`config`): α = tokens a node reads in 3 s, β = tokens one engine prefills in 5 s.

Use::

    sched = GlobalScheduler(scheduler_config_for_system(system_spec("dualpath"),
                                                        alpha_tokens=a, beta_tokens=b))
    result = sched.schedule(waiting_requests, ClusterView.build(engines, nodes))
    for p in result.placements: ...   # p.pe_engine, p.de_engine, p.read.side / tokens
"""

from dualpath.scheduler.batching import BatchItem, BatchPlan, PrefillWork, form_prefill_batch
from dualpath.scheduler.config import (
    READ_POLICY_NAMES,
    SchedulerConfig,
    alpha_tokens,
    beta_tokens,
    scheduler_config_for_system,
)
from dualpath.scheduler.global_scheduler import GlobalScheduler
from dualpath.scheduler.predictor import (
    AttentionTimePredictor,
    FlopsAttentionPredictor,
    attention_flops,
)
from dualpath.scheduler.read_path import READ_POLICIES, make_read_policy
from dualpath.scheduler.registry import PLACEMENT_POLICIES, POLICIES, PlacementPolicy, make_policy
from dualpath.scheduler.types import (
    ClusterView,
    EngineState,
    NodeState,
    Placement,
    ReadPlan,
    RequestInfo,
    ScheduleResult,
)

__all__ = [
    "PLACEMENT_POLICIES",
    "POLICIES",
    "READ_POLICIES",
    "READ_POLICY_NAMES",
    "AttentionTimePredictor",
    "BatchItem",
    "BatchPlan",
    "ClusterView",
    "EngineState",
    "FlopsAttentionPredictor",
    "GlobalScheduler",
    "NodeState",
    "Placement",
    "PlacementPolicy",
    "PrefillWork",
    "ReadPlan",
    "RequestInfo",
    "ScheduleResult",
    "SchedulerConfig",
    "alpha_tokens",
    "attention_flops",
    "beta_tokens",
    "form_prefill_batch",
    "make_policy",
    "make_read_policy",
    "scheduler_config_for_system",
]
