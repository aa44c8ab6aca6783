"""The cluster simulator: turns arrive, the shared scheduler places them, stages move them.

A turn's journey (DESIGN.md sections 2-3):
arrive -> global queue -> `GlobalScheduler.schedule` picks PE, DE and read side ->
storage read over the chosen node's SNIC into its DRAM buffer (`reads`) -> ready at the PE ->
a lockstep forward of the PE's expert-parallel group (`prefill`) whose prefix KV streams into
the GPU over its CNIC (layerwise: overlapped with compute; basic: loaded whole first) while
the KV streams on to the decode node's bounded buffer (`transfer`) -> the DE copies it into
HBM and decodes in lockstep with its group (`decode`) -> the finished turn persists its new
full blocks and the agent's next turn arrives.

The load books the scheduler sees (seq_e, tok_e, free KV, read_q) change only through the
shared charge rule (`scheduler.charges.Charge`), applied at placement and released in parts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from dualpath.core.systems import system_spec
from dualpath.scheduler.charges import ALL_PARTS, Charge, ChargePart, decode_kv_tokens
from dualpath.scheduler.config import alpha_tokens, beta_tokens, scheduler_config_for_system
from dualpath.scheduler.global_scheduler import GlobalScheduler
from dualpath.scheduler.types import ClusterView, EngineState, NodeState, RequestInfo
from dualpath.sim.cluster import build_cluster
from dualpath.sim.config import SimConfig
from dualpath.sim.cost import CostModel
from dualpath.sim.cpu import HostCPU
from dualpath.sim.decode import DecodeStage
from dualpath.sim.events import EventLoop
from dualpath.sim.hardware import HardwareSpec, load_hardware
from dualpath.sim.model_cost import ModelCost, model_cost
from dualpath.sim.prefill import K_BATCH_IN, PrefillStage
from dualpath.sim.prefix import PrefixStore
from dualpath.sim.reads import StorageReads
from dualpath.sim.state import SimRequest, WaitingQueue, computed_kv_tokens
from dualpath.sim.transfer import KVTransfer
from dualpath.workload.metrics import TurnRecord

logger = logging.getLogger(__name__)

NO_READ_PARTS = frozenset({ChargePart.PREFILL, ChargePart.DECODE})

# One agent: (arrival_s, [(append_tokens, gen_tokens), ...]) and optionally a third item,
# (hash_ids, tokens per hash id), naming the first append's content block by block.
Agent = tuple[Any, ...]


class Simulator:
    """One run: `Simulator(config, agents).run()` -> finished `SimRequest`s."""

    def __init__(self, config: SimConfig, agents: Sequence[Agent],
                 hardware: HardwareSpec | None = None, model: ModelCost | None = None, *,
                 agent_ids: Sequence[int] | None = None, keep_requests: bool = True) -> None:
        """model: a cost preset not in `MODEL_PRESETS` (e.g. one built from a runtime model's
        config); None = `model_cost(config.model)`. Every finished turn becomes a
        `TurnRecord` in `records` (agent = `agent_ids[i]`, default the index `i`) as it
        ends; keep_requests=False drops its `SimRequest` then (`finished` stays empty), which
        at 7.8M turns saves gigabytes."""
        self.cfg = config
        self.spec = system_spec(config.system)
        self.free_io = self.spec.free_io
        self.layerwise = self.spec.layerwise
        self.hw = hardware if hardware is not None else load_hardware(config.hardware)
        self.model = model if model is not None else model_cost(config.model)
        self.kvb = self.model.kv_bytes_per_token
        self.cost = CostModel(self.model, self.hw)
        self.arrivals = [float(a[0]) for a in agents]
        self.turns = [list(a[1]) for a in agents]
        self.prefixes = PrefixStore.for_agents(agents, config.block_tokens)
        self.loop = EventLoop()
        self.finished: list[SimRequest] = []
        self.records: list[TurnRecord] = []  # in the order turns ended
        self._agent_ids = agent_ids
        self._keep_requests = keep_requests
        # Sums over finished turns of TTFT's parts: queue, read, prefill (`ttft_breakdown`).
        self.ttft_sums = [0.0, 0.0, 0.0]
        self.decisions: list[tuple[Any, ...]] = []
        self.side_counts = {"pe": 0, "de": 0, "split": 0}
        self.sched_calls = 0
        self.sched_inputs: list[tuple[tuple[RequestInfo, ...], ClusterView]] = []
        self._rid = 0
        self._sched_pending = False
        self._last_sched_s = -1e18
        self.waiting: dict[int, SimRequest] = {}
        self.waiting_info: dict[int, RequestInfo] = {}  # the same turns, as the scheduler sees them
        # Engines sharing one host's cores (a profiled runtime): None = each has its own GPU.
        self.cpu = (HostCPU(self, self.hw.host_cores, self.hw.frontend_cpu_s_per_token)
                    if self.hw.host_cores > 0 else None)
        self.reads = StorageReads(self)
        self.transfer = KVTransfer(self)
        self.decode = DecodeStage(self)
        cluster = build_cluster(config, self.hw, self.model, self.cost,
                                self.reads.on_read_done, self._on_cnic_done)
        self.nodes = cluster.nodes
        self.engines = cluster.engines
        # The scheduler's view, rebuilt only for engines / nodes whose books changed.
        self._engine_states = [self._engine_state(e.eid) for e in self.engines]
        self._node_states = [self._node_state(n.nid) for n in self.nodes]
        self._dirty_engines: set[int] = set()
        self._dirty_nodes: set[int] = set()
        self._last_view: ClusterView | None = None
        self.prefill_groups = cluster.prefill_groups
        self.decode_groups = cluster.decode_groups
        self._build_scheduler()
        self.prefill = PrefillStage(self)

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
            weights = self.prefill_groups[0].weight_bytes
            beta = beta_tokens(self.cost.prefill_tokens_per_s(ctx, new, weights))
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
            self.loop.schedule(at, self._on_first_arrive, agent)
        tick = None
        if progress is not None:
            total = sum(len(t) for t in self.turns)
            finished = self.records

            def tick(now: float) -> None:
                progress(len(finished), total, now)

        self.loop.run(until_s=self.cfg.max_sim_s, tick=tick)
        if tick is not None:
            tick(self.loop.now_s)
        return self.finished

    def _new_turn(self, agent: int, turn: int, done_tokens: int) -> SimRequest:
        """done_tokens: the agent's context so far (earlier prompts and answers). Its stored
        prefix is the whole blocks of the KV the last turn computed (`computed_kv_tokens`), or
        for a first turn what other turns sharing its hash ids persisted (`PrefixStore`),
        capped, as the runtime's lookup is, so at least one prompt token is computed."""
        app, gen = self.turns[agent][turn]
        prompt = done_tokens + app
        block = self.cfg.block_tokens
        if turn > 0:
            prev_gen = self.turns[agent][turn - 1][1]
            stored = computed_kv_tokens(done_tokens - prev_gen, prev_gen)
        else:
            stored = self.prefixes.stored_tokens(agent, prompt) if self.prefixes else 0
        cached = min(stored // block, (prompt - 1) // block) * block
        self._rid += 1
        req = SimRequest(self._rid, agent, turn, prompt, cached, gen)
        reserve = decode_kv_tokens(prompt, gen, block) - prompt
        req.info = RequestInfo(self._rid, prompt, cached, 0.0, reserve)
        return req

    def _on_first_arrive(self, now: float, agent: int) -> Any:
        # The stored prefix is looked up on arrival, as the runtime's scheduler does.
        return self._on_arrive(now, self._new_turn(agent, 0, 0))

    def _on_arrive(self, now: float, req: SimRequest) -> Any:
        req.start_s = now
        self.waiting[req.rid] = req
        self.waiting_info[req.rid] = req.info
        return self.want_schedule(now)

    def want_schedule(self, now: float) -> Any:
        if self._sched_pending or not self.waiting:
            return None
        self._sched_pending = True
        return ((max(now, self._last_sched_s + self.cfg.sched_interval_s), self._on_schedule, None),)

    def _engine_state(self, eid: int) -> EngineState:
        e = self.engines[eid]
        return EngineState(eid, e.node.nid, "prefill" if e.role == "prefill" else "decode",
                           e.seq, e.tok, max(0, e.free_kv_tokens))

    def _node_state(self, nid: int) -> NodeState:
        n = self.nodes[nid]
        return NodeState(nid, "prefill" if n.role == "prefill" else "decode", n.read_q)

    def cluster_view(self) -> ClusterView:
        states = self._engine_states
        for eid in self._dirty_engines:
            states[eid] = self._engine_state(eid)
        self._dirty_engines.clear()
        nstates = self._node_states
        for nid in self._dirty_nodes:
            nstates[nid] = self._node_state(nid)
        self._dirty_nodes.clear()
        last = self._last_view
        # Same engines and nodes every call: only the entries rebuilt above are re-validated.
        view = (ClusterView(tuple(states), tuple(nstates)) if last is None
                else ClusterView.updated(last, states, nstates))
        self._last_view = view
        return view

    def _on_schedule(self, now: float, _: Any) -> Any:
        self._sched_pending = False
        self._last_sched_s = now
        if not self.waiting:
            return None
        self.sched_calls += 1
        waiting = self.waiting
        infos = WaitingQueue(self.waiting_info)
        view = self.cluster_view()
        if self.cfg.record_scheduler_inputs:
            self.sched_inputs.append((tuple(infos), view))
        result = self.scheduler.schedule(infos, view)
        events: list[Any] = []
        waiting_info = self.waiting_info
        for p in result.placements:
            rid = int(p.request_id)
            del waiting_info[rid]
            req = waiting.pop(rid)
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
        req.pe_read = plan.pe_tokens
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
                    events.extend(self.reads.queue(now, req, node, tokens) or ())
        else:  # no time on the SNICs, but the engines still read (and send) the bytes
            events.extend(self.reads.io_cpu(now, plan.pe_tokens, plan.de_tokens))
        req.info = None  # only the scheduler needs it; frees memory at scale
        if req.pending_reads == 0:
            events.extend(self.reads.complete(now, req) or ())
        return events

    def end_turn(self, now: float, req: SimRequest) -> Any:
        """The last token is out: release the decode charge, persist, next turn arrives."""
        req.end_s = now
        gen = req.gen
        ids = self._agent_ids
        self.records.append(TurnRecord(req.agent if ids is None else ids[req.agent], req.turn,
                                       req.start_s, req.first_s,
                                       req.second_s if gen > 1 else None, now, req.prompt, gen,
                                       req.cached))
        sums = self.ttft_sums
        sums[0] += req.placed_s - req.start_s
        sums[1] += req.read_done_s - req.placed_s
        sums[2] += req.first_s - req.read_done_s
        if self._keep_requests:
            self.finished.append(req)
        block = self.cfg.block_tokens
        req.charge.apply_part(self, ChargePart.DECODE, -1)
        req.charge = None
        events: list[Any] = []
        total = req.prompt + req.gen
        new_blocks = computed_kv_tokens(req.prompt, req.gen) // block - req.cached // block
        if new_blocks > 0 and not self.free_io:
            # Persisting goes out of the SNIC's send direction, which nothing else uses: it is
            # counted, not simulated as a flow.
            req.de.node.bytes_written += new_blocks * (block * self.kvb + self.cfg.block_header_bytes)
        if req.turn + 1 < len(self.turns[req.agent]):
            nxt = self._new_turn(req.agent, req.turn + 1, total)
            events.append((now + self.hw.turn_gap_s, self._on_arrive, nxt))
        cpu = self.cpu
        if cpu is not None and self.hw.frontend_cpu_s_per_turn > 0:
            events.extend(cpu.job(now, self.hw.frontend_cpu_s_per_turn))
        events.extend(self.want_schedule(now) or ())
        return events

    # -- the load books the scheduler sees (scheduler.charges.LoadBooks) -----------------
    def charge_engine(self, engine: int, seq: int, tok: int, kv: int) -> None:
        e = self.engines[engine]
        e.seq += seq
        e.tok += tok
        e.free_kv_tokens -= kv
        self._dirty_engines.add(engine)

    def charge_node(self, node: int, tokens: int) -> None:
        self.nodes[node].read_q += tokens
        self._dirty_nodes.add(node)

    def _on_cnic_done(self, now: float, token: tuple[int, Any]) -> Any:
        kind, obj = token
        if kind == K_BATCH_IN:
            return self.prefill.part_done(now, obj)
        return None  # K_COLLECTIVE: nothing waits for it
