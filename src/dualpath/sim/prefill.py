"""Prefill-engine handlers of the simulator (a mixin of `Simulator`).

Layerwise prefill (DESIGN.md 2): the batch's prefix KV streams into the GPU over its CNIC
while it computes, so the batch takes max(compute, KV-in transfer); its KV leaves for the
decode engines at the same time. Non-layerwise (`basic`): the prefixes are loaded whole into
HBM first (the batch is also bounded by the HBM left for KV), then computed, then sent.
`oracle`: no I/O cost at all.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

from dualpath.scheduler.charges import ChargePart
from dualpath.sim.batching import form_batch
from dualpath.sim.link import LO
from dualpath.sim.state import Engine, SimRequest

PREFILL_PART = frozenset({ChargePart.PREFILL})

# Entries of a PE's ready queue that batch formation looks at (a 300 ms quota never holds
# more than a few dozen turns; the bound keeps formation O(1) per batch).
BATCH_LOOKAHEAD = 32
K_BATCH_IN = 0


class PrefillMixin:
    """Needs from the host: cfg, cost, model, kvb, layerwise, free_io, quota_s, loop."""

    def _start_batch(self: Any, now: float, pe: Engine) -> Any:
        if pe.busy or not pe.ready:
            return None
        ready = pe.ready
        queue = ((r.cached + r.done_new, r.prompt - r.cached - r.done_new, r.cached + r.done_new)
                 for r in islice(ready, BATCH_LOOKAHEAD))
        if self.layerwise or self.free_io:
            kv_limit = pe.kv_hbm_bytes * self.model.num_layers / self.kvb
        else:
            kv_limit = pe.kv_hbm_bytes / self.kvb
        chunks = form_batch(queue, self.quota_s, self.cost.attention_time_s, kv_limit)
        batch: list[tuple[SimRequest, int]] = []
        flops = 0.0
        in_tokens = 0
        new_tokens = 0
        model = self.model
        for c in chunks:
            req = ready[0]
            ctx = req.cached + req.done_new
            batch.append((req, c))
            flops += model.prefill_flops(ctx, c)
            in_tokens += ctx
            new_tokens += c
            if c >= req.prompt - ctx:
                ready.popleft()
            else:
                break  # a chunked request stays at the head for the next batch
        pe.busy = True
        pe.bstart_s = now
        pe.batch = batch
        compute_s = self.cost.prefill_time_s(flops)
        pe.bcompute_s = compute_s
        if self.free_io:
            pe.bphase = 2
            pe.batch_pending = 1
            return ((now + compute_s, self._batch_part_done, pe),)
        events: list[Any] = []
        # Expert all-to-all of this batch on the high-priority class. Modelled on the receive
        # side only (the KV traffic that competes with it is mostly inbound); the send side's
        # equal share is counted, not simulated (about 5% of a CNIC for ds-660b).
        coll = self.cost.ep_bytes_per_token * new_tokens
        if coll > 0:
            events.extend(self._hi(pe.rx, now, coll) or ())
            pe.acct_tx += coll
        in_bytes = in_tokens * self.kvb
        if self.layerwise:
            pe.bphase = 0
            pe.batch_pending = 1
            events.append((now + compute_s, self._batch_part_done, pe))
            if in_bytes > 0:
                pe.batch_pending += 1
                events.extend(pe.rx.add(now, in_bytes, (K_BATCH_IN, pe), LO) or ())
                self._account_in(batch)
            for req, c in batch:
                events.extend(self._send_kv(now, pe, req, c) or ())
        else:
            pe.bphase = 1
            pe.batch_pending = 1
            if in_bytes > 0:
                events.extend(pe.rx.add(now, in_bytes, (K_BATCH_IN, pe), LO) or ())
                self._account_in(batch)
            else:
                events.append((now, self._batch_part_done, pe))
        return events

    def _account_in(self: Any, batch: list[tuple[SimRequest, int]]) -> None:
        """DE-path prefix KV leaves the decode engine's CNIC (the flow is on the PE's)."""
        for req, _ in batch:
            if req.side != "pe" and req.de is not None:
                req.de.acct_tx += (req.cached - self._pe_read_tokens(req)) * self.kvb

    def _pe_read_tokens(self: Any, req: SimRequest) -> int:
        return int(req.pe_buf_bytes // self.kvb) if self.kvb else 0

    def _send_kv(self: Any, now: float, pe: Engine, req: SimRequest, chunk: int) -> Any:
        """PD transfer of this chunk's KV (plus, with the first chunk, the PE-read prefix)."""
        tokens = chunk
        if req.done_new == 0:
            tokens += self._pe_read_tokens(req)
        nbytes = tokens * self.kvb
        req.pd_pending += 1
        if req.de is not None:
            req.de.acct_rx += nbytes
        # The PE's send queue is FIFO (the only traffic simulated on its CNIC's send side).
        return ((pe.tx.reserve(now, nbytes), self._pd_part_done, req),)

    def _batch_part_done(self: Any, now: float, pe: Engine) -> Any:
        pe.batch_pending -= 1
        if pe.batch_pending > 0:
            return None
        if pe.bphase == 1:  # non-layerwise: prefix loaded, now compute
            pe.bphase = 2
            pe.batch_pending = 1
            return ((now + pe.bcompute_s, self._batch_part_done, pe),)
        events: list[Any] = []
        overlapped = pe.bphase == 0
        for req, c in pe.batch:
            if not overlapped and not self.free_io:
                events.extend(self._send_kv(now, pe, req, c) or ())
            req.done_new += c
            if req.done_new >= req.prompt - req.cached:
                req.first_s = now
                req.prefilled = True
                req.charge.apply(self, PREFILL_PART, -1)
                events.extend(self._free_buffer(now, pe.node, req.pe_buf_bytes) or ())
                if req.pd_pending == 0:
                    events.extend(self._decode_arrive(now, req) or ())
        pe.busy = False
        pe.busy_s += now - pe.bstart_s
        pe.batch = []
        events.extend(self._start_batch(now, pe) or ())
        events.extend(self._want_schedule(now) or ())
        return events

    def _pd_part_done(self: Any, now: float, req: SimRequest) -> Any:
        req.pd_pending -= 1
        if req.pd_pending == 0 and req.prefilled:
            return self._decode_arrive(now, req)
        return None
