"""Mutable state of the simulated cluster: requests (turns), engines (GPUs), nodes.

Plain `__slots__` classes, not dataclasses: the simulator touches these hundreds of
thousands of times per second, and only the simulator mutates them. What leaves the
simulator (TurnRecords, the scheduler's views, the report) is frozen.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from dualpath.sim.link import Link


def computed_kv_tokens(prompt: int, gen: int) -> int:
    """KV that exists when a turn ends: the prompt and every answer token but the last (the
    last sampled token is never fed back through the model). Its whole blocks are persisted."""
    return prompt + max(1, gen) - 1


class SimRequest:
    """One turn of one agent, from arrival to its last generated token."""

    __slots__ = (
        "agent", "cached", "charge", "de", "de_buf_bytes", "done_new", "end_s", "first_s", "gen", "info",
        "pd_pending", "pe", "pe_buf_bytes", "pending_reads", "placed_s", "prefilled", "prompt",
        "read_done_s", "rid", "second_s", "side", "sjoin", "start_s", "turn",
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
        self.pending_reads = 0
        self.pe_buf_bytes = 0.0
        self.de_buf_bytes = 0.0
        self.done_new = 0
        self.pd_pending = 0
        self.prefilled = False
        self.sjoin = 0.0

    @property
    def miss(self) -> int:
        return self.prompt - self.cached


class Node:
    """A node: g engines of one role, one SNIC (read and write directions), a DRAM buffer."""

    __slots__ = (
        "buf_free", "buf_total", "bytes_written", "engines", "nid", "read_q", "read_wait", "reads_active", "role",
        "snic",
    )

    def __init__(self, nid: int, role: str, snic: Link, buffer_bytes: float) -> None:
        self.nid = nid
        self.role = role
        self.snic = snic
        self.bytes_written = 0.0  # persisted blocks (SNIC send direction)
        self.read_q = 0  # tokens queued or being read (the scheduler's read_q)
        self.buf_total = buffer_bytes
        self.buf_free = buffer_bytes
        self.read_wait: deque[tuple[SimRequest, int]] = deque()
        self.reads_active = 0
        self.engines: list[Engine] = []


class Engine:
    """One GPU. Prefill engines batch their ready requests; decode engines run one batch.

    Decode progress is lazy: `d_steps` is the (fractional) number of decode steps done at
    `d_last_s`; a request that joins at step s finishes at step s + gen - 1. The context sum
    of the batch is `d_base + d_n * d_steps`, so a membership change costs O(log n).
    """

    __slots__ = (
        "acct_rx", "acct_tx", "batch", "batch_pending", "bcompute_s", "bphase", "bstart_s", "busy", "busy_s", "d_area", "d_base", "d_heap", "d_last_s", "d_n", "d_step_s",
        "d_steps", "d_version", "eid", "free_kv_tokens", "kv_hbm_bytes", "node", "ready", "role",
        "rx", "seq", "tok", "tx",
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
        self.ready: deque[SimRequest] = deque()
        self.busy = False
        self.batch: list[tuple[SimRequest, int]] = []
        self.batch_pending = 0
        self.bphase = 0  # 1: loading the prefix (non-layerwise), 2: computing, 0: overlapped
        self.bcompute_s = 0.0
        self.bstart_s = 0.0
        self.busy_s = 0.0  # prefill: time inside batches; decode: time with a non-empty batch
        # Bytes this GPU's CNIC carried as the far end of a flow modelled on the other end.
        self.acct_rx = 0.0
        self.acct_tx = 0.0
        self.d_n = 0
        self.d_base = 0.0
        self.d_steps = 0.0
        self.d_last_s = 0.0
        self.d_step_s = 0.0
        self.d_heap: list[tuple[float, int, SimRequest]] = []
        self.d_version = 0
        self.d_area = 0.0  # integral of the decode batch size over time
