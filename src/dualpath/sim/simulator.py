"""The cluster simulator: event handlers for scheduling, storage reads and prefill.

A turn's journey (DESIGN.md sections 2-3):
arrive -> global queue -> `GlobalScheduler.schedule` picks PE, DE and read side ->
storage read over the chosen node's SNIC into its DRAM buffer (FIFO, `read_slots_per_node`
at a time, bounded buffer) -> ready at the PE -> PE batch (quota, chunking) whose prefix KV
streams into the GPU over its CNIC's low-priority class (layerwise: overlapped with compute;
basic: loaded whole before compute) while expert all-to-all uses the high class -> the
prompt KV goes PE -> DE over CNICs (the PE's FIFO send queue) -> the DE copies it into HBM
(its FIFO copy queue) and decodes (see `decode`)
-> the finished turn persists its new full blocks to storage and the agent's next turn
arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from dualpath.core.errors import ConfigError
from dualpath.core.systems import system_spec
from dualpath.scheduler.charges import ALL_PARTS, Charge, ChargePart, decode_kv_tokens
from dualpath.scheduler.config import alpha_tokens, beta_tokens, scheduler_config_for_system
from dualpath.scheduler.global_scheduler import GlobalScheduler
from dualpath.scheduler.types import ClusterView, EngineState, NodeState, RequestInfo
from dualpath.sim.config import SimConfig
from dualpath.sim.cost import CostModel
from dualpath.sim.decode import DecodeMixin
from dualpath.sim.events import EventLoop
from dualpath.sim.hardware import HardwareSpec, load_hardware
from dualpath.sim.link import HI, LO, Link
from dualpath.sim.model_cost import model_cost
from dualpath.sim.prefill import PrefillMixin
from dualpath.sim.state import Engine, Node, SimRequest, computed_kv_tokens

logger = logging.getLogger(__name__)

NO_READ_PARTS = frozenset({ChargePart.PREFILL, ChargePart.DECODE})
# Flow tokens on CNIC links: (kind, object).
K_BATCH_IN, K_COLLECTIVE = 0, 3


class Simulator(PrefillMixin, DecodeMixin):
    """One run: `Simulator(config, trajectories).run()` -> finished `SimRequest`s."""

    def __init__(self, config: SimConfig, agents: Sequence[tuple[float, Sequence[tuple[int, int]]]],
                 hardware: HardwareSpec | None = None) -> None:
        """agents: (arrival_s, [(append_tokens, gen_tokens), ...]) per agent."""
        self.cfg = config
        self.spec = system_spec(config.system)
        self.free_io = self.spec.free_io
        self.layerwise = self.spec.layerwise
        self.hw = hardware if hardware is not None else load_hardware(config.hardware)
        self.model = model_cost(config.model)
        self.kvb = self.model.kv_bytes_per_token
        p_nodes, d_nodes = config.pd
        g = self.hw.gpus_per_node
        self.cost = CostModel(self.model, self.hw, p_nodes * g, d_nodes * g, p_nodes)
        usable = self.hw.hbm_bytes * (1.0 - self.hw.hbm_reserve_fraction)
        for role, w in (("prefill", self.cost.pe_weight_bytes), ("decode", self.cost.de_weight_bytes)):
            if w >= usable:
                raise ConfigError(
                    f"{self.model.name} does not fit: {w / 1e9:.1f} GB of weights per {role} GPU "
                    f"(HBM {usable / 1e9:.1f} GB usable); use more nodes (--pd)"
                )
        self.arrivals = [float(a) for a, _ in agents]
        self.turns = [list(t) for _, t in agents]
        self.loop = EventLoop()
        self.finished: list[SimRequest] = []
        self.decisions: list[tuple[Any, ...]] = []
        self.side_counts = {"pe": 0, "de": 0, "split": 0}
        self.sched_calls = 0
        self.sched_inputs: list[tuple[tuple[RequestInfo, ...], ClusterView]] = []
        self._rid = 0
        self._sched_pending = False
        self._last_sched_s = -1e18
        self.waiting: dict[int, SimRequest] = {}
        self._build_cluster(p_nodes, d_nodes)
        self._build_scheduler()

    # -- setup -------------------------------------------------------------------------
    def _build_cluster(self, p_nodes: int, d_nodes: int) -> None:
        hw, cfg = self.hw, self.cfg
        g = hw.gpus_per_node
        bin_s = cfg.timeline_bin_s
        snic_bw = hw.snic_share_bytes_s(p_nodes + d_nodes)
        cnic_bw = hw.cnic_goodput_bytes_s
        buf = hw.buffer_bytes_for(self.model.name)
        self.nodes: list[Node] = []
        self.engines: list[Engine] = []
        pe_kv = self.cost.kv_hbm_bytes(self.cost.pe_weight_bytes)
        de_kv = self.cost.kv_hbm_bytes(self.cost.de_weight_bytes)
        de_kv_tokens = int(de_kv // self.kvb)
        if cfg.de_kv_capacity_tokens is not None:
            de_kv_tokens = cfg.de_kv_capacity_tokens
        for n in range(p_nodes + d_nodes):
            role = "prefill" if n < p_nodes else "decode"
            snic = Link(f"snic{n}", snic_bw, on_complete=self._on_read_done, bin_s=bin_s)
            node = Node(n, role, snic, buf)
            self.nodes.append(node)
            for _ in range(g):
                eid = len(self.engines)
                rx = Link(f"cnic{eid}-rx", cnic_bw, hi_weight=hw.cnic_hi_weight,
                          on_complete=self._on_cnic_done, bin_s=bin_s)
                tx = Link(f"cnic{eid}-tx", cnic_bw, hi_weight=hw.cnic_hi_weight,
                          on_complete=self._on_cnic_done, bin_s=bin_s)
                # free_kv_tokens is the scheduler's decode-side KV room; a prefill engine keeps
                # no KV between requests and reports 0, as the runtime's prefill engines do.
                if role == "prefill":
                    eng = Engine(eid, node, role, rx, tx, pe_kv, 0)
                else:
                    eng = Engine(eid, node, role, rx, tx, de_kv, de_kv_tokens)
                node.engines.append(eng)
                self.engines.append(eng)
        self.node_states_static = [(n.nid, n.role) for n in self.nodes]

    def _build_scheduler(self) -> None:
        # α: a node's storage read rate for 3 s; β: prompt tokens one PE prefills in 5 s at
        # the workload's mean turn shape (a profile, as the paper's β is).
        # SimConfig.alpha_tokens / beta_tokens override both (to mirror a measured cluster).
        ctx, new = self._mean_turn_shape()
        alpha = self.cfg.alpha_tokens
        if alpha is None:
            alpha = alpha_tokens(self.nodes[0].snic.capacity_bytes_s, self.kvb)
        beta = self.cfg.beta_tokens
        if beta is None:
            beta = beta_tokens(self.cost.prefill_tokens_per_s(ctx, new))
        self.alpha, self.beta = alpha, beta
        sc = scheduler_config_for_system(self.spec, alpha_tokens=alpha, beta_tokens=beta,
                                         read_path=self.cfg.read_path, split_reads=self.cfg.split_reads)
        self.sched_config = sc
        self.scheduler = GlobalScheduler(sc)
        self.quota_s = sc.quota_s

    def _mean_turn_shape(self) -> tuple[int, int]:
        n = ctx = new = 0
        for agent in self.turns:
            done = 0
            for app, gen in agent:
                ctx += done
                new += app
                done += app + gen
                n += 1
        return (ctx // max(1, n), max(1, new // max(1, n)))

    # -- running -------------------------------------------------------------------------
    def run(self, progress: Callable[[int, int, float], None] | None = None) -> list[SimRequest]:
        """Simulate to the end (or `max_sim_s`). progress(turns done, turns total, sim time)
        is called now and then (every 65,536 events) and once at the end."""
        for agent, at in enumerate(self.arrivals):
            self.loop.schedule(at, self._on_arrive, self._new_turn(agent, 0, 0))
        tick = None
        if progress is not None:
            total = sum(len(t) for t in self.turns)
            finished = self.finished

            def tick(now: float) -> None:
                progress(len(finished), total, now)

        self.loop.run(until_s=self.cfg.max_sim_s, tick=tick)
        if tick is not None:
            tick(self.loop.now_s)
        return self.finished

    def _new_turn(self, agent: int, turn: int, done_tokens: int) -> SimRequest:
        """done_tokens: the agent's context so far (earlier prompts and answers). Its stored
        prefix is the whole blocks of the KV the last turn computed (`computed_kv_tokens`),
        capped, as the runtime's lookup is, so at least one prompt token is computed."""
        app, gen = self.turns[agent][turn]
        prompt = done_tokens + app
        block = self.cfg.block_tokens
        stored = 0
        if turn > 0:
            prev_gen = self.turns[agent][turn - 1][1]
            stored = computed_kv_tokens(done_tokens - prev_gen, prev_gen)
        cached = min(stored // block, (prompt - 1) // block) * block
        self._rid += 1
        req = SimRequest(self._rid, agent, turn, prompt, cached, gen)
        reserve = decode_kv_tokens(prompt, gen, block) - prompt
        req.info = RequestInfo(self._rid, prompt, cached, 0.0, reserve)
        return req

    def _on_arrive(self, now: float, req: SimRequest) -> Any:
        req.start_s = now
        self.waiting[req.rid] = req
        return self._want_schedule(now)

    def _want_schedule(self, now: float) -> Any:
        if self._sched_pending or not self.waiting:
            return None
        self._sched_pending = True
        return ((max(now, self._last_sched_s + self.cfg.sched_interval_s), self._on_schedule, None),)

    def cluster_view(self) -> ClusterView:
        engines = [EngineState(e.eid, e.node.nid, "prefill" if e.role == "prefill" else "decode",
                               e.seq, e.tok, max(0, e.free_kv_tokens)) for e in self.engines]
        nodes = [NodeState(n.nid, "prefill" if n.role == "prefill" else "decode", n.read_q)
                 for n in self.nodes]
        return ClusterView(tuple(engines), tuple(nodes))

    def _on_schedule(self, now: float, _: Any) -> Any:
        self._sched_pending = False
        self._last_sched_s = now
        if not self.waiting:
            return None
        self.sched_calls += 1
        waiting = self.waiting
        infos = [r.info for r in waiting.values()]
        view = self.cluster_view()
        if self.cfg.record_scheduler_inputs:
            self.sched_inputs.append((tuple(infos), view))
        result = self.scheduler.schedule(infos, view)
        events: list[Any] = []
        for p in result.placements:
            req = waiting.pop(int(p.request_id))
            ev = self._apply(now, req, p)
            if ev:
                events.extend(ev)
        return events

    def _apply(self, now: float, req: SimRequest, p: Any) -> Any:
        pe = self.engines[p.pe_engine]
        de = self.engines[p.de_engine]
        req.pe, req.de, req.placed_s = pe, de, now
        plan = p.read
        req.side = plan.side
        self.side_counts[plan.side] += 1
        if self.cfg.log_decisions:
            self.decisions.append((now, req.rid, pe.eid, de.eid, plan.side, plan.pe_tokens, plan.de_tokens))
        req.charge = Charge.of(req.info, pe.eid, de.eid, pe.node.nid, de.node.nid, plan)
        # Oracle reads nothing, so it charges no read queue.
        req.charge.apply(self, NO_READ_PARTS if self.free_io else ALL_PARTS)
        events: list[Any] = []
        if not self.free_io:
            for node, tokens in ((pe.node, plan.pe_tokens), (de.node, plan.de_tokens)):
                if tokens > 0:
                    node.read_wait.append((req, tokens))
                    req.pending_reads += 1
                    ev = self._pump_reads(now, node)
                    if ev:
                        events.extend(ev)
        req.info = None  # only the scheduler needs it; frees memory at scale
        if req.pending_reads == 0:
            ev = self._reads_complete(now, req)
            if ev:
                events.extend(ev)
        return events

    # -- the load books the scheduler sees (scheduler.charges.LoadBooks) -----------------
    def charge_engine(self, engine: int, seq: int, tok: int, kv: int) -> None:
        e = self.engines[engine]
        e.seq += seq
        e.tok += tok
        e.free_kv_tokens -= kv

    def charge_node(self, node: int, tokens: int) -> None:
        self.nodes[node].read_q += tokens

    # -- storage reads -------------------------------------------------------------------
    def _pump_reads(self, now: float, node: Node) -> Any:
        events: list[Any] = []
        wait = node.read_wait
        while wait and node.reads_active < self.cfg.read_slots_per_node:
            req, tokens = wait[0]
            nbytes = tokens * self.kvb
            if nbytes > node.buf_free and not (node.buf_free >= node.buf_total):
                break  # bounded DRAM buffer: wait until prefill/decode frees some
            wait.popleft()
            node.buf_free -= nbytes
            if node.role == "prefill":
                req.pe_buf_bytes += nbytes
            else:
                req.de_buf_bytes += nbytes
            node.reads_active += 1
            ev = node.snic.add(now, nbytes, (req, node, tokens), LO)
            if ev:
                events.extend(ev)
        return events

    def _on_read_done(self, now: float, token: tuple[SimRequest, Node, int]) -> Any:
        req, node, tokens = token
        node.reads_active -= 1
        self.charge_node(node.nid, -tokens)
        req.pending_reads -= 1
        events: list[Any] = list(self._pump_reads(now, node) or ())
        if req.pending_reads == 0:
            events.extend(self._reads_complete(now, req) or ())
        return events

    def _reads_complete(self, now: float, req: SimRequest) -> Any:
        req.read_done_s = now
        pe = req.pe
        assert pe is not None
        pe.ready.append(req)
        if not pe.busy:
            return self._start_batch(now, pe)
        return None

    def _free_buffer(self, now: float, node: Node, nbytes: float) -> Any:
        if nbytes <= 0:
            return None
        node.buf_free += nbytes
        return self._pump_reads(now, node)

    def _on_cnic_done(self, now: float, token: tuple[int, Any]) -> Any:
        kind, obj = token
        if kind == K_BATCH_IN:
            return self._batch_part_done(now, obj)
        return None  # K_COLLECTIVE: nothing waits for it

    @staticmethod
    def _hi(link: Link, now: float, nbytes: float) -> Any:
        return link.add(now, nbytes, (K_COLLECTIVE, None), HI) if nbytes > 0 else None
