"""Decode engines: lockstep steps of an expert-parallel group.

A decode engine puts every request in its batch (DESIGN.md 3). The members of one EP group
(`DecodeGroup`) step together — each step's expert all-to-all synchronises them — so the
group's step time is the slowest member's roofline time (`CostModel.decode_member_s` of its
batch size and mean context; its routed-expert FLOPs are counted for its own tokens, which a
balanced group makes the group mean) plus the per-step overhead. A member's time is
recomputed only when its batch changes; the group's maximum is kept incrementally.

Progress is lazy: the group counts (fractional) steps; a request joining at step s finishes
at step s + gen - 1 (its first token came from the prefill, its second after the first step
it joins). The group's heap holds every member's requests by finishing step, so one event
per change suffices. When a turn ends its new full blocks are persisted to storage over the
decode node's SNIC (write direction) and the agent's next turn arrives (`Simulator`).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

from dualpath.sim.state import DecodeGroup, Engine, SimRequest, computed_kv_tokens

if TYPE_CHECKING:
    from dualpath.sim.simulator import Simulator


class DecodeStage:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.cost = sim.cost
        self.overhead_s = sim.hw.decode_step_overhead_s
        self.cpu = sim.cpu
        hw = sim.hw
        # CPU for moving a turn's KV on a shared host (`HardwareSpec.de_kv_cpu_s_per_byte`).
        self.kv_cpu = sim.cpu is not None and (hw.de_kv_cpu_s_per_byte > 0
                                               or hw.de_persist_cpu_s_per_byte > 0)

    @staticmethod
    def _advance(g: DecodeGroup, now: float) -> None:
        if g.d_n > 0 and g.d_step_s > 0:
            g.d_steps += (now - g.d_last_s) / g.d_step_s
        g.d_last_s = now

    @staticmethod
    def _account(de: Engine, now: float) -> None:
        """Bring `de`'s busy time and batch-size integral up to `now` (batch unchanged since)."""
        if de.d_n > 0:
            dt = now - de.d_acct_s
            de.busy_s += dt
            de.d_area += de.d_n * dt
        de.d_acct_s = now

    def _retime(self, g: DecodeGroup, de: Engine) -> None:
        n = de.d_n
        t = self.cost.decode_member_s(n, (de.d_base + n * g.d_steps) / n, g.weight_bytes) if n else 0.0
        de.d_time = t
        if t >= g.t_max:
            g.t_max, g.arg_max = t, de
        elif g.arg_max is de:
            best = max(g.members, key=lambda m: m.d_time)
            g.t_max, g.arg_max = best.d_time, best

    def join(self, now: float, req: SimRequest) -> Any:
        """The prompt KV is in the DE's HBM: the request joins the next step."""
        de = req.de
        g = de.group
        prefixes = self.sim.prefixes
        if req.turn == 0 and prefixes is not None:
            # The runtime's DE persists the prompt's whole blocks as it emits the first token.
            prefixes.persisted(req.agent, req.prompt)
        kv_events = self._kv_work(now, req) if self.kv_cpu else None
        self._advance(g, now)
        if req.gen <= 1:
            req.second_s = -1.0
            if kv_events:
                kv_events.extend(self.sim.end_turn(now, req) or ())
                return kv_events
            return self.sim.end_turn(now, req)
        self._account(de, now)
        req.sjoin = g.d_steps
        heapq.heappush(g.heap, (g.d_steps + req.gen - 1, req.rid, req))
        de.d_n += 1
        g.d_n += 1
        de.d_base += req.prompt - g.d_steps
        self._retime(g, de)
        cpu = self.cpu
        # The engine starts computing: the other groups slow down before this one's step.
        events = cpu.change(now, 1, skip=g) if cpu is not None and de.d_n == 1 else None
        ev = self._next(g)
        req.second_s = now + g.d_step_s
        if kv_events:
            events = kv_events + (events or [])
        if events:
            events.extend(ev or ())
            return events
        return ev

    def _kv_work(self, now: float, req: SimRequest) -> list[Any]:
        """The DE's CPU work of moving this turn's KV (into its paged cache, and persisting
        the turn's new whole blocks) starts now on the shared cores: one more engine's
        worth computing until it is done (its time fixed at its start, as a prefill's)."""
        sim = self.sim
        hw = sim.hw
        cpu = self.cpu
        assert cpu is not None
        block = sim.cfg.block_tokens
        persisted = computed_kv_tokens(req.prompt, req.gen) // block - req.cached // block
        work = sim.kvb * (req.prompt * hw.de_kv_cpu_s_per_byte
                          + max(0, persisted) * block * hw.de_persist_cpu_s_per_byte)
        return cpu.job(now, work)

    def retime_all(self, now: float, skip: DecodeGroup | None) -> list[Any]:
        """Every running group's step time from `now` (the host CPU's share changed)."""
        events: list[Any] = []
        for g in self.sim.decode_groups:
            if g.d_n > 0 and g is not skip:
                self._advance(g, now)
                events.extend(self._next(g) or ())
        return events

    def _next(self, g: DecodeGroup) -> Any:
        g.version += 1
        cpu = self.cpu
        step = g.t_max + self.overhead_s
        events: Any = None
        if cpu is not None and cpu.fe_token_s > 0:
            # The front end's per-token load follows this group's batch / profiled step.
            q = g.d_n / step if g.d_n and step > 0 else 0.0
            if q != g.token_q:
                events = cpu.change(g.d_last_s, 0, skip=g, token_q=q - g.token_q)
                g.token_q = q
        if g.d_n == 0:
            g.d_step_s = 0.0
            return events
        if cpu is not None:
            step *= cpu.slowdown
        g.d_step_s = step
        left = g.heap[0][0] - g.d_steps
        ev = (g.d_last_s + (left if left > 0 else 0.0) * step, self._on_decode, (g, g.version))
        if events:
            events.append(ev)
            return events
        return (ev,)

    def _on_decode(self, now: float, arg: tuple[DecodeGroup, int]) -> Any:
        g, version = arg
        if version != g.version:
            return None
        self._advance(g, now)
        heap = g.heap
        events: list[Any] = []
        limit = g.d_steps + 1e-6
        end_turn = self.sim.end_turn
        changed: dict[int, Engine] = {}  # members whose batch shrank: retimed once each
        while heap and heap[0][0] <= limit:
            req = heapq.heappop(heap)[2]
            de = req.de
            if de.eid not in changed:
                self._account(de, now)  # later finishers of this step add no time
                changed[de.eid] = de
            de.d_n -= 1
            g.d_n -= 1
            de.d_base -= req.prompt - req.sjoin
            events.extend(end_turn(now, req) or ())
        idle = 0
        for de in changed.values():
            self._retime(g, de)
            if de.d_n == 0:
                idle += 1
        cpu = self.cpu
        if cpu is not None and idle:
            events.extend(cpu.change(now, -idle, skip=g))
        events.extend(self._next(g) or ())
        return events
