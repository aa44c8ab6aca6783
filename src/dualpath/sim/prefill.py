"""Prefill engines: lockstep forwards of an expert-parallel group.

Attention runs data-parallel and the MoE layers expert-parallel (DESIGN.md 3-4), so the
engines of one EP group (`PrefillGroup`) run their forwards together: when a forward starts,
every member with ready turns forms its own batch from its FIFO queue with the compute quota
(300 ms of predicted attention; the scheduler's `form_prefill_batch`), and every layer waits
for the slowest member's attention (the all-to-all synchronises them), so the forward takes
the slowest member's time plus the per-forward overhead. A member that becomes ready while a
forward runs waits for the next one; an idle group starts its forward at the current
instant, after every turn that became ready at that instant (e.g. placed by the same
scheduler call) has joined its queue.

Layerwise prefill: each member's prefix KV streams into its GPU over its CNIC's low-priority
class while it computes, so the forward ends when the slowest member's compute and every
member's KV-in stream are done (a stream late for layer l holds every member at layer l);
each chunk's KV leaves for its decode engine at the same time (`transfer`). Non-layerwise
(`basic`): every member loads its batch's prefixes whole into HBM first (the batch is also
bounded by the HBM left for KV), the group computes once all loads are done, then sends.
`oracle`: no I/O cost. The expert all-to-all of each forward uses the high-priority class.
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Any

from dualpath.scheduler.charges import ChargePart
from dualpath.sim.batching import form_batch
from dualpath.sim.cost import attention_pairs
from dualpath.sim.link import HI, LO
from dualpath.sim.state import Engine, PrefillGroup, SimRequest

if TYPE_CHECKING:
    from dualpath.sim.simulator import Simulator

PREFILL = ChargePart.PREFILL

# Entries of a PE's ready queue that batch formation looks at (a 300 ms quota never holds
# more than a few dozen turns; the bound keeps formation O(1) per batch).
BATCH_LOOKAHEAD = 32
# Flow tokens on CNIC links: (kind, object); the simulator routes completions by kind.
K_BATCH_IN, K_COLLECTIVE = 0, 3


class PrefillStage:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.cost = sim.cost
        self.model = sim.model
        self.kvb = sim.kvb
        self.layerwise = sim.layerwise
        self.free_io = sim.free_io
        self.quota_s = sim.quota_s
        self.overhead_s = sim.hw.prefill_batch_overhead_s
        self.cpu = sim.cpu
        # SimConfig.prefill_batch_requests: an engine that runs a batch's requests one after
        # another (our runtime's PE) is a forward per request.
        limit = sim.cfg.prefill_batch_requests
        self.lookahead = BATCH_LOOKAHEAD if limit is None else min(BATCH_LOOKAHEAD, limit)

    def ready(self, now: float, req: SimRequest) -> Any:
        """`req`'s prefix is in a buffer: queue it at its PE; start a forward if idle."""
        pe = req.pe
        pe.ready.append(req)
        group = pe.group
        if group.busy or group.start_pending:
            return None
        group.start_pending = True
        return ((now, self._start_now, group),)

    def _start_now(self, now: float, g: PrefillGroup) -> Any:
        g.start_pending = False
        if g.busy:
            return None
        return self._start(now, g)

    def _form(self, pe: Engine) -> tuple[float, int, int, float]:
        """Form `pe.batch`; returns (FLOPs, prefix tokens to stream in, new tokens, attention
        pairs)."""
        ready = pe.ready
        queue = ((r.cached + r.done_new, r.prompt - r.cached - r.done_new, r.cached + r.done_new)
                 for r in islice(ready, self.lookahead))
        if self.layerwise or self.free_io:
            kv_limit = pe.kv_hbm_bytes * self.model.num_layers / self.kvb
        else:
            kv_limit = pe.kv_hbm_bytes / self.kvb
        chunks = form_batch(queue, self.quota_s, self.cost.attention_time_s, kv_limit)
        batch: list[tuple[SimRequest, int]] = []
        flops = 0.0
        in_tokens = new_tokens = 0
        pairs = 0.0
        model = self.model
        for c in chunks:
            req = ready[0]
            ctx = req.cached + req.done_new
            batch.append((req, c))
            flops += model.prefill_flops(ctx, c)
            in_tokens += ctx
            new_tokens += c
            pairs += attention_pairs(ctx, c)
            if c >= req.prompt - ctx:
                ready.popleft()
            else:
                break  # a chunked request stays at the head for the next batch
        pe.batch = batch
        return flops, in_tokens, new_tokens, pairs

    def _start(self, now: float, g: PrefillGroup) -> Any:
        working: list[Engine] = []
        slowest = 0.0
        flows: list[tuple[Engine, float, float]] = []  # (member, KV-in bytes, collective bytes)
        kvb = self.kvb
        for m in g.members:
            if not m.ready:
                continue
            flops, in_tokens, new_tokens, pairs = self._form(m)
            working.append(m)
            t = self.cost.prefill_member_s(flops, g.weight_bytes, in_tokens, new_tokens, pairs)
            if t > slowest:
                slowest = t
            flows.append((m, in_tokens * kvb, g.coll_bytes_per_token * new_tokens))
        if not working:
            return None
        g.busy = True
        g.start_s = now
        g.working = working
        g.compute_s = slowest + self.overhead_s
        if self.free_io:
            g.phase = 2
            g.pending = 1
            return self._compute(now, g)
        events: list[Any] = []
        token = (K_BATCH_IN, g)
        g.pending = 0
        for m, in_bytes, coll in flows:
            if coll > 0:
                # Modelled on the receive side (the KV traffic that competes with it is
                # inbound); the send side's equal share is counted, not simulated.
                events.extend(m.rx.add(now, coll, (K_COLLECTIVE, None), HI) or ())
                m.acct_tx += coll
            if in_bytes > 0:
                g.pending += 1
                events.extend(m.rx.add(now, in_bytes, token, LO) or ())
                self._account_in(m)
        if self.layerwise:
            g.phase = 0
            g.pending += 1
            events.extend(self._compute(now, g))
            send = self.sim.transfer.send_chunk
            for m in working:
                for req, c in m.batch:
                    send(now, m, req, c)
        else:
            g.phase = 1
            if g.pending == 0:
                g.pending = 1
                events.append((now, self.part_done, g))
        return events

    def _compute(self, now: float, g: PrefillGroup) -> list[Any]:
        """The group's forward computes from `now` (its end is one of its parts)."""
        cpu = self.cpu
        if cpu is None:
            return [(now + g.compute_s, self.part_done, g)]
        events = cpu.change(now, len(g.working))
        events.append((now + g.compute_s * cpu.slowdown, self._computed, g))
        send_cpu = self.sim.hw.engine_send_cpu_s_per_byte
        if send_cpu > 0:
            # Each engine's sender thread streams the forward's KV (with a first chunk, the
            # PE-read prefix too) to the decode engines while it computes.
            for m in g.working:
                tokens = sum(c + (req.pe_read if req.done_new == 0 else 0) for req, c in m.batch)
                events.extend(cpu.job(now, tokens * self.kvb * send_cpu))
        return events

    def _computed(self, now: float, g: PrefillGroup) -> Any:
        """The compute of a forward on a shared host ended (`HostCPU`)."""
        cpu = self.cpu
        assert cpu is not None
        events = cpu.change(now, -len(g.working))
        events.extend(self.part_done(now, g) or ())
        return events

    def _account_in(self, pe: Engine) -> None:
        """DE-path prefix KV leaves the decode engine's CNIC (the flow is on the PE's)."""
        kvb = self.kvb
        for req, _ in pe.batch:
            if req.side != "pe":
                req.de.acct_tx += (req.cached - req.pe_read) * kvb

    def part_done(self, now: float, g: PrefillGroup) -> Any:
        """A KV-in stream or the compute of the group's forward ended."""
        g.pending -= 1
        if g.pending > 0:
            return None
        if g.phase == 1:  # non-layerwise: every prefix loaded, now compute
            g.phase = 2
            g.pending = 1
            return self._compute(now, g)
        events: list[Any] = []
        send_after = g.phase == 2 and not self.free_io
        sim = self.sim
        transfer = sim.transfer
        span = now - g.start_s
        for m in g.working:
            m.busy_s += span
            for req, c in m.batch:
                if send_after:
                    transfer.send_chunk(now, m, req, c)
                req.done_new += c
                if req.done_new >= req.prompt - req.cached:
                    req.first_s = now
                    req.prefilled = True
                    req.charge.apply_part(sim, PREFILL, -1)
                    events.extend(transfer.prefill_done(now, req) or ())
            m.batch = []
        g.busy = False
        g.working = []
        events.extend(self._start(now, g) or ())
        events.extend(sim.want_schedule(now) or ())
        return events
