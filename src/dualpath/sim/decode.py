"""Decode-engine handlers of the simulator (a mixin of `Simulator`).

A decode engine puts every request in its batch (DESIGN.md 3). Its step time comes from
the roofline (`CostModel.decode_step_s`) of the current batch size and mean context, and is
recomputed only when the batch changes; in between, progress is counted lazily in steps.
A turn's first token comes from the prefill; its second after the first decode step it
joins; it ends after gen - 1 steps. Then its new full blocks are persisted to storage over
the decode node's SNIC (write direction) and the agent's next turn arrives.
"""

from __future__ import annotations

import heapq
from typing import Any

from dualpath.scheduler.charges import ChargePart
from dualpath.sim.state import Engine, SimRequest, computed_kv_tokens

DECODE_PART = frozenset({ChargePart.DECODE})


class DecodeMixin:
    """Needs from the host: cfg, cost, kvb, free_io, finished, turns, _new_turn, ..."""

    def _decode_arrive(self: Any, now: float, req: SimRequest) -> Any:
        """The prompt KV is in the DE's buffer: copy it into HBM (over the DE's CNIC)."""
        if self.free_io:
            return self._decode_join(now, req)
        de = req.de
        # The DE's own buffer-to-HBM copies, FIFO through its CNIC (CNIC-centric design).
        return ((de.rx.reserve(now, req.prompt * self.kvb), self._de_copy_done, req),)

    def _de_copy_done(self: Any, now: float, req: SimRequest) -> Any:
        de = req.de
        events = list(self._free_buffer(now, de.node, req.de_buf_bytes) or ())
        events.extend(self._decode_join(now, req) or ())
        return events

    @staticmethod
    def _advance_decode(de: Engine, now: float) -> None:
        if de.d_n > 0 and de.d_step_s > 0:
            dt = now - de.d_last_s
            de.d_steps += dt / de.d_step_s
            de.busy_s += dt
            de.d_area += de.d_n * dt
        de.d_last_s = now

    def _decode_join(self: Any, now: float, req: SimRequest) -> Any:
        de = req.de
        self._advance_decode(de, now)
        if req.gen <= 1:
            req.second_s = -1.0
            return self._end_turn(now, req)
        req.sjoin = de.d_steps
        heapq.heappush(de.d_heap, (de.d_steps + req.gen - 1, req.rid, req))
        de.d_n += 1
        de.d_base += req.prompt - de.d_steps
        ev = self._decode_next(de)
        req.second_s = now + de.d_step_s
        return ev

    def _decode_next(self: Any, de: Engine) -> Any:
        de.d_version += 1
        n = de.d_n
        if n == 0:
            de.d_step_s = 0.0
            return None
        step = self.cost.decode_step_s(n, (de.d_base + n * de.d_steps) / n)
        de.d_step_s = step
        left = max(0.0, de.d_heap[0][0] - de.d_steps)
        return ((de.d_last_s + left * step, self._on_decode, (de, de.d_version)),)

    def _on_decode(self: Any, now: float, arg: tuple[Engine, int]) -> Any:
        de, version = arg
        if version != de.d_version:
            return None
        self._advance_decode(de, now)
        heap = de.d_heap
        events: list[Any] = []
        limit = de.d_steps + 1e-6
        while heap and heap[0][0] <= limit:
            req = heapq.heappop(heap)[2]
            de.d_n -= 1
            de.d_base -= req.prompt - req.sjoin
            events.extend(self._end_turn(now, req) or ())
        events.extend(self._decode_next(de) or ())
        return events

    def _end_turn(self: Any, now: float, req: SimRequest) -> Any:
        req.end_s = now
        self.finished.append(req)
        de = req.de
        block = self.cfg.block_tokens
        req.charge.apply(self, DECODE_PART, -1)
        req.charge = None
        events: list[Any] = []
        total = req.prompt + req.gen
        new_blocks = computed_kv_tokens(req.prompt, req.gen) // block - req.cached // block
        if new_blocks > 0 and not self.free_io:
            # Persisting goes out of the SNIC's send direction, which nothing else uses: it is
            # counted, not simulated as a flow.
            de.node.bytes_written += new_blocks * block * self.kvb
        if req.turn + 1 < len(self.turns[req.agent]):
            events.append((now, self._on_arrive, self._new_turn(req.agent, req.turn + 1, total)))
        events.extend(self._want_schedule(now) or ())
        return events
