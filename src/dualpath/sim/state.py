"""Mutable state of the simulated cluster: requests (turns), engines (GPUs), nodes, EP groups.

Plain `__slots__` classes, not dataclasses: the simulator touches these hundreds of
thousands of times per second, and only the simulator mutates them. What leaves the
simulator (TurnRecords, the scheduler's views, the report) is frozen.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any, overload

from dualpath.sim.link import Link


def computed_kv_tokens(prompt: int, gen: int) -> int:
    """KV that exists when a turn ends: the prompt and every answer token but the last (the
    last sampled token is never fed back through the model). Its whole blocks are persisted."""
    return prompt + max(1, gen) - 1


class SimRequest:
    """One turn of one agent, from arrival to its last generated token."""

    __slots__ = (
        "agent", "cached", "charge", "de", "de_buf_bytes", "done_new", "end_s", "first_s", "gen", "info",
        "pd_end", "pd_wait_bytes", "pe", "pe_buf_bytes", "pe_read", "pending_reads", "placed_s",
        "prefilled", "prompt", "read_done_s", "rid", "room", "second_s", "side", "sjoin", "start_s", "turn",
    )

    def __init__(self, rid: int, agent: int, turn: int, prompt: int, cached: int, gen: int) -> None:
        self.rid = rid
        self.agent = agent
        self.turn = turn
        self.prompt = prompt
        self.cached = cached
        self.gen = gen
        self.info: Any = None
        self.charge: Any = None  # scheduler.charges.Charge while placed (released in parts)
        self.start_s = 0.0
        self.placed_s = 0.0
        self.read_done_s = 0.0
        self.first_s = 0.0
        self.second_s = 0.0
        self.end_s = 0.0
        # Set when the scheduler places the turn (Any: None before that, an Engine after).
        self.pe: Any = None
        self.de: Any = None
        self.side = "pe"
        self.pe_read = 0  # prefix tokens read through the prefill node (the rest: DE side)
        self.pending_reads = 0
        self.pe_buf_bytes = 0.0  # held in the prefill node's DRAM buffer
        self.de_buf_bytes = 0.0  # held (reserved) in the decode node's DRAM buffer
        self.done_new = 0
        self.pd_end = 0.0  # when the PE -> DE KV streams started so far are through
        self.room = 0  # DE buffer room for the PE -> DE stream: 0 not asked, 1 waiting, 2 held
        self.pd_wait_bytes = 0.0  # KV waiting for that room
        self.prefilled = False
        self.sjoin = 0.0

    @property
    def miss(self) -> int:
        return self.prompt - self.cached


class Node:
    """A node: g engines of one role, one SNIC (read and write directions), a DRAM buffer.

    `read_wait` queues storage reads for a read slot and buffer room; `room_wait` (decode
    nodes) queues PE -> DE KV streams for buffer room.
    """

    __slots__ = (
        "buf_free", "buf_min_free", "buf_total", "bytes_written", "engines", "nid", "read_q", "read_wait",
        "reads_active", "role", "room_wait", "snic",
    )

    def __init__(self, nid: int, role: str, snic: Link, buffer_bytes: float) -> None:
        self.nid = nid
        self.role = role
        self.snic = snic
        self.bytes_written = 0.0  # persisted blocks (SNIC send direction)
        self.read_q = 0  # tokens queued or being read (the scheduler's read_q)
        self.buf_total = buffer_bytes
        self.buf_free = buffer_bytes
        self.buf_min_free = buffer_bytes  # low-water mark (peak use = buf_total - this)
        self.read_wait: deque[tuple[SimRequest, int]] = deque()
        self.room_wait: deque[SimRequest] = deque()
        self.reads_active = 0
        self.engines: list[Engine] = []


class Engine:
    """One GPU, a member of one EP group (`group`). Prefill engines form one batch per group
    forward from their ready queue; decode engines put all their requests in every step.

    Decode: `d_n` requests whose context sum is `d_base + d_n * group.d_steps`; `d_time` is
    this member's step time (no overhead) as of its last change; `d_acct_s` is when its
    busy time / batch-size integral were last brought up to date.
    """

    __slots__ = (
        "acct_rx", "acct_tx", "batch", "busy_s", "d_acct_s", "d_area", "d_base", "d_n", "d_time",
        "eid", "free_kv_tokens", "group", "kv_hbm_bytes", "node", "ready", "role", "rx", "seq", "tok", "tx",
    )

    def __init__(self, eid: int, node: Node, role: str, rx: Link, tx: Link, kv_hbm_bytes: float,
                 free_kv_tokens: int) -> None:
        self.eid = eid
        self.node = node
        self.role = role
        self.rx = rx
        self.tx = tx
        self.seq = 0
        self.tok = 0
        self.kv_hbm_bytes = kv_hbm_bytes
        self.free_kv_tokens = free_kv_tokens
        self.group: Any = None  # PrefillGroup or DecodeGroup
        self.ready: deque[SimRequest] = deque()
        self.batch: list[tuple[SimRequest, int]] = []
        self.busy_s = 0.0  # prefill: time inside group forwards with work; decode: with a batch
        # Bytes this GPU's CNIC carried as the far end of a flow modelled on the other end.
        self.acct_rx = 0.0
        self.acct_tx = 0.0
        self.d_n = 0
        self.d_base = 0.0
        self.d_time = 0.0
        self.d_acct_s = 0.0
        self.d_area = 0.0  # integral of the decode batch size over time


class PrefillGroup:
    """Prefill engines that share experts: their forwards run in lockstep (one forward at a
    time; it ends when the slowest member's compute and KV transfers have)."""

    __slots__ = ("busy", "coll_bytes_per_token", "compute_s", "gid", "members", "pending", "phase",
                 "start_pending", "start_s", "weight_bytes", "working")

    def __init__(self, gid: int, members: list[Engine], weight_bytes: float,
                 coll_bytes_per_token: float) -> None:
        self.gid = gid
        self.members = members
        self.weight_bytes = weight_bytes
        self.coll_bytes_per_token = coll_bytes_per_token
        self.busy = False
        self.start_pending = False  # a forward start is queued for the current instant
        self.pending = 0
        self.phase = 0  # 1: loading prefixes whole (basic), 2: computing, 0: overlapped
        self.compute_s = 0.0
        self.start_s = 0.0
        self.working: list[Engine] = []  # members with a batch in the current forward


class DecodeGroup:
    """Decode engines that share experts: every member advances one step at a time together,
    at the pace of the slowest member (`t_max` + the per-step overhead). Progress is lazy:
    `d_steps` (fractional) steps done at `d_last_s`; `heap` holds every member's requests
    keyed by the group step at which they finish."""

    __slots__ = ("arg_max", "d_last_s", "d_n", "d_step_s", "d_steps", "gid", "heap", "members",
                 "t_max", "token_q", "version", "weight_bytes")

    def __init__(self, gid: int, members: list[Engine], weight_bytes: float) -> None:
        self.gid = gid
        self.members = members
        self.weight_bytes = weight_bytes
        self.d_n = 0
        self.d_steps = 0.0
        self.d_last_s = 0.0
        self.d_step_s = 0.0
        self.t_max = 0.0
        self.arg_max: Engine | None = None
        self.heap: list[tuple[float, int, SimRequest]] = []
        self.version = 0
        self.token_q = 0.0  # its share of `HostCPU.token_q` (batch / profiled step)


class WaitingQueue(Sequence[Any]):
    """The waiting queue's `RequestInfo`s in arrival order, read straight from the
    simulator's insertion-ordered dict (request id -> info) without copying it.

    The scheduler looks at the head (it stops at the first full prefill tier), but the queue
    at 48K agents holds tens of thousands of requests; copying it on every call was O(queue).
    Valid only while the dict is not changed (one `schedule` call).
    """

    __slots__ = ("_infos",)

    def __init__(self, infos: dict[int, Any]) -> None:
        self._infos = infos

    def __len__(self) -> int:
        return len(self._infos)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._infos.values())

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            if index.start in (None, 0) and index.step in (None, 1) and index.stop is not None \
                    and index.stop >= 0:
                return list(islice(self._infos.values(), index.stop))
            return list(self._infos.values())[index]
        if 0 <= index < len(self._infos):
            return next(islice(self._infos.values(), index, None))
        return list(self._infos.values())[index]
