"""What goes into and comes out of the global scheduler (DESIGN.md section 3).

Everything here is a frozen dataclass: the caller (the runtime's scheduler process or the
simulator) owns reality and describes it in a `ClusterView`; the scheduler answers with a
`ScheduleResult`. Nothing in here refers to a clock, a socket or a tensor.

Units: every quantity is in *tokens* (the paper's load proxy for GPU, disk and network).
Ids are ints; a caller with string names keeps its own name <-> int map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field
from itertools import compress
from operator import is_not
from typing import Literal

from dualpath.core.errors import SchedulingError
from dualpath.core.frozen import reduce_frozen
from dualpath.scheduler.layout import ClusterLayout

Role = Literal["prefill", "decode"]
ReadSide = Literal["pe", "de", "split"]
RequestId = int | str

ROLES: tuple[str, ...] = ("prefill", "decode")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """One waiting request, as the scheduler sees it.

    prompt_tokens: the whole prompt (hit + miss).
    cached_tokens: the prefix whose KV is in storage and must be read (hit); miss tokens
        (`prompt_tokens - cached_tokens`) are computed by the prefill engine.
    decode_reserve_tokens: KV room the decode engine must hold beyond the prompt (e.g. the
        request's max_tokens, or 0 to let the decode engine grow on demand).
    arrival_s: informational; the scheduler keeps the order of the sequence it is given.
    """

    request_id: RequestId
    prompt_tokens: int
    cached_tokens: int = 0
    arrival_s: float = 0.0
    decode_reserve_tokens: int = 0

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1:
            raise SchedulingError(f"request {self.request_id!r}: prompt_tokens must be >= 1")
        if not 0 <= self.cached_tokens <= self.prompt_tokens:
            raise SchedulingError(
                f"request {self.request_id!r}: cached_tokens must be in [0, prompt_tokens]"
            )
        if self.decode_reserve_tokens < 0:
            raise SchedulingError(f"request {self.request_id!r}: decode_reserve_tokens < 0")

    @property
    def miss_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @property
    def prefill_load_tokens(self) -> int:
        """What a request adds to a prefill engine's `tok_e` (its total tokens)."""
        return self.prompt_tokens

    @property
    def decode_kv_tokens(self) -> int:
        """`len_r` of DESIGN.md 3: KV room (and `tok_e`) the request takes on a decode engine."""
        return self.prompt_tokens + self.decode_reserve_tokens

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


@dataclass(frozen=True, slots=True)
class EngineState:
    """One engine (one GPU) as its group leader reports it.

    seq: assigned, unfinished requests (`seq_e`); tok: their total tokens (`tok_e`).
    free_kv_tokens: free KV room in GPU memory, in tokens; used for decode engines only.
    """

    engine_id: int
    node_id: int
    role: Role
    seq: int = 0
    tok: int = 0
    free_kv_tokens: int = 0

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node (= one engine group); read_queue_tokens is its storage read queue (`read_q`)."""

    node_id: int
    role: Role
    read_queue_tokens: int = 0

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


class _Validated:
    """`ClusterView.updated`'s proof that it validated the entries that changed."""

    __slots__ = ("layout",)

    def __init__(self, layout: ClusterLayout) -> None:
        self.layout = layout


@dataclass(frozen=True)
class ClusterView:
    """A consistent snapshot of the cluster. Engine order is the tie-break order everywhere.

    Validated on construction (unique ids, every engine on a known node of the same role,
    no negative counters); an inconsistent view raises `SchedulingError`. `layout` is the
    structure derived from it (positions, node members, tie-break orders); `updated` builds
    the next snapshot of the same structure re-validating only the entries that changed.
    """

    engines: tuple[EngineState, ...]
    nodes: tuple[NodeState, ...]
    layout: ClusterLayout = field(init=False, repr=False, compare=False)
    # Internal to `updated`, which has validated what changed: `base`'s layout, reused. Only
    # a `_Validated` (private) skips the checks; anything else passed here is refused.
    _validated: InitVar[_Validated | None] = None

    def __post_init__(self, _validated: _Validated | None) -> None:
        if _validated is not None:
            if not isinstance(_validated, _Validated):
                raise SchedulingError("ClusterView takes engines and nodes; to reuse a "
                                      "validated layout use ClusterView.updated")
            object.__setattr__(self, "layout", _validated.layout)
            return
        node_index: dict[int, int] = {}
        for i, node in enumerate(self.nodes):
            _check_node(node)
            if node.node_id in node_index:
                raise SchedulingError(f"duplicate node id {node.node_id}")
            node_index[node.node_id] = i
        seen: set[int] = set()
        for e in self.engines:
            if e.engine_id in seen:
                raise SchedulingError(f"duplicate engine id {e.engine_id}")
            seen.add(e.engine_id)
            ni = node_index.get(e.node_id)
            if ni is None:
                raise SchedulingError(f"engine {e.engine_id}: unknown node {e.node_id}")
            _check_engine(e, self.nodes[ni].role)
        object.__setattr__(self, "layout", ClusterLayout(self.engines, self.nodes))

    @classmethod
    def build(cls, engines: Sequence[EngineState], nodes: Sequence[NodeState]) -> ClusterView:
        return cls(tuple(engines), tuple(nodes))

    @classmethod
    def updated(cls, base: ClusterView, engines: Sequence[EngineState],
                nodes: Sequence[NodeState]) -> ClusterView:
        """The next snapshot of `base`'s cluster: same engines and nodes at the same positions
        (ids, nodes and roles unchanged), new counters. An entry that is the very object of
        `base` was validated with it; every other one is checked as the constructor would
        (and must keep its position's id, node and role), so the result is exactly as valid
        as `ClusterView(engines, nodes)` — at the cost of the changed entries only."""
        engines = tuple(engines)
        nodes = tuple(nodes)
        layout = base.layout
        if len(engines) != len(base.engines) or len(nodes) != len(base.nodes):
            raise SchedulingError("updated view: engines or nodes were added or removed; "
                                  "build a new ClusterView")
        for i in compress(range(len(nodes)), map(is_not, nodes, base.nodes)):
            node = nodes[i]
            if node.node_id != layout.node_ids[i] or node.role != layout.node_roles[i]:
                raise SchedulingError(f"updated view: node at position {i} changed identity")
            _check_node(node)
        for i in compress(range(len(engines)), map(is_not, engines, base.engines)):
            e = engines[i]
            ni = layout.engine_node[i]
            if e.engine_id != layout.engine_ids[i] or e.node_id != layout.node_ids[ni]:
                raise SchedulingError(f"updated view: engine at position {i} changed identity")
            _check_engine(e, layout.node_roles[ni])
        return cls(engines, nodes, _Validated(layout))

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


def _check_node(node: NodeState) -> None:
    if node.role not in ROLES:
        raise SchedulingError(f"node {node.node_id}: unknown role {node.role!r}")
    if node.read_queue_tokens < 0:
        raise SchedulingError(f"node {node.node_id}: negative read queue")


def _check_engine(e: EngineState, node_role: str) -> None:
    if node_role != e.role:
        raise SchedulingError(
            f"engine {e.engine_id} is {e.role} but node {e.node_id} is "
            f"{node_role}; a group is all prefill or all decode"
        )
    if e.seq < 0 or e.tok < 0 or e.free_kv_tokens < 0:
        raise SchedulingError(f"engine {e.engine_id}: negative seq/tok/free_kv_tokens")


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Where a request's cached prefix is read from storage.

    side "pe": all `cached_tokens` via the prefill node's SNIC; "de": via the decode node's;
    "split": the first `pe_tokens` of the prefix via the prefill node and the remaining
    `de_tokens` via the decode node. Always `pe_tokens + de_tokens == cached_tokens`.
    """

    request_id: RequestId
    side: ReadSide
    pe_node: int
    de_node: int
    pe_tokens: int
    de_tokens: int

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


@dataclass(frozen=True, slots=True)
class Placement:
    """The decision for one request: its prefill engine, decode engine and read plan."""

    request_id: RequestId
    pe_engine: int
    pe_node: int
    de_engine: int
    de_node: int
    read: ReadPlan

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


# Why a schedule call stopped placing requests.
StopReason = Literal["queue-drained", "prefill-full", "decode-full", "no-engines"]


@dataclass(frozen=True)
class ScheduleResult:
    """Decisions of one `schedule` call, in arrival order.

    placements: the placed requests, a subsequence of the waiting queue in its order (a
        request is skipped only when its decode group had no room, DESIGN.md 3 phase 2).
    stop_reason: why placing stopped: "queue-drained" (every waiting request was looked at),
        "prefill-full" (no prefill engine may take more: all above β), "decode-full" (no
        decode engine / group has room for the request at the stop), "no-engines" (the view
        has no prefill or no decode engine).
    examined: requests `waiting[:examined]` were each placed or skipped (dualpath only: its
        decode group had stopped); requests from `waiting[examined]` on were not reached.
        Unplaced requests simply stay in the caller's queue for the next call.
    """

    placements: tuple[Placement, ...]
    stop_reason: StopReason
    examined: int

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled
