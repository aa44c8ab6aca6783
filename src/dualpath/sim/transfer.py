"""The PE -> DE KV stream and the decode engine's host-to-device copy (DESIGN.md 2).

Layer by layer, a prefill engine sends each forward's KV to the request's decode engine:
on the PE read path every prompt token's (the prefix read into the PE buffer goes with the
first chunk), on the DE read path only the computed (miss) tokens'. The stream crosses the
PE's CNIC (send) and the DE's CNIC (receive) into the decode node's DRAM buffer. Layerwise,
a chunk's stream starts with its forward (layer l leaves as soon as layer l is computed; the
last layer's share after the forward's end, about 0.5 ms for a 32K-token chunk of DS 660B,
is not modelled); `basic` sends after the forward.

The decode node's buffer is bounded. A turn reserves its whole prompt's room there: a DE-path
turn with its storage read (`reads`), a PE-path turn when its first chunk's stream starts;
without room the stream waits in the node's FIFO (`room_wait`) while the prefill engine goes
on (the KV waits in the PE buffer, which the turn holds until its stream has left). Once the
whole prompt is there and prefill is done, the DE copies it into HBM through its own CNIC
(CNIC-centric: host-to-device copies go through the GPU's NIC), frees the buffer room and
joins the decode batch.

Both CNIC directions that carry these FIFO streams (a PE's send side, a DE's receive side)
carry nothing else in the model, so each is a first-come-first-served pipe (`Link.reserve`);
a stream ends when it is through both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dualpath.sim.state import Engine, Node, SimRequest

if TYPE_CHECKING:
    from dualpath.sim.simulator import Simulator

ROOM_NONE, ROOM_WAITING, ROOM_HELD = 0, 1, 2


class KVTransfer:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.kvb = sim.kvb
        self.room_waits = 0  # streams that had to wait for decode-buffer room

    # -- the PE -> DE stream ---------------------------------------------------------------
    def send_chunk(self, now: float, pe: Engine, req: SimRequest, chunk: int) -> None:
        """Stream one chunk's KV (plus, with the first chunk, the PE-read prefix)."""
        tokens = chunk + (req.pe_read if req.done_new == 0 else 0)
        nbytes = tokens * self.kvb
        if req.room == ROOM_HELD:
            self._start(now, pe, req, nbytes)
            return
        if req.room == ROOM_WAITING:
            req.pd_wait_bytes += nbytes
            return
        node = req.de.node
        # A turn whose room is already reserved (DE read path) never queues: the FIFO holds
        # only turns that still need room, so it cannot wait behind them (no deadlock).
        if req.prompt * self.kvb <= req.de_buf_bytes or (not node.room_wait and self._grant(node, req)):
            req.room = ROOM_HELD
            self._start(now, pe, req, nbytes)
            return
        req.room = ROOM_WAITING
        self.room_waits += 1
        req.pd_wait_bytes = float(nbytes)  # goes as one stream once room is granted
        node.room_wait.append(req)

    def _grant(self, node: Node, req: SimRequest) -> bool:
        need = req.prompt * self.kvb - req.de_buf_bytes
        if need > node.buf_free and node.buf_free < node.buf_total:
            return False
        if need > 0:
            node.buf_free -= need
            req.de_buf_bytes += need
            if node.buf_free < node.buf_min_free:
                node.buf_min_free = node.buf_free
        req.room = ROOM_HELD
        return True

    def pump_room(self, now: float, node: Node) -> Any:
        """Buffer room came free on a decode node: start the waiting streams, FIFO."""
        events: list[Any] = []
        wait = node.room_wait
        while wait and self._grant(node, wait[0]):
            req = wait.popleft()
            nbytes, req.pd_wait_bytes = req.pd_wait_bytes, 0.0
            self._start(now, req.pe, req, nbytes)
            if req.prefilled:
                events.extend(self._after_streams(now, req))
        return events

    @staticmethod
    def _start(now: float, pe: Engine, req: SimRequest, nbytes: float) -> None:
        """FIFO through the PE's send side and the DE's receive side: the stream is through
        when it is through both (no event: the hand-off waits for the latest end)."""
        end = pe.tx.reserve(now, nbytes)
        end_rx = req.de.rx.reserve(now, nbytes)
        if end_rx > end:
            end = end_rx
        if end > req.pd_end:
            req.pd_end = end

    def prefill_done(self, now: float, req: SimRequest) -> Any:
        """The prefill engine computed the last chunk (called by `prefill`)."""
        if req.room == ROOM_WAITING:
            return None  # `pump_room` hands it off once its stream has room
        return self._after_streams(now, req)

    def _after_streams(self, now: float, req: SimRequest) -> Any:
        if req.pd_end <= now:
            return self._handoff(now, req)
        return ((req.pd_end, self._handoff, req),)

    def _handoff(self, now: float, req: SimRequest) -> Any:
        """All prompt KV is in the DE buffer: release the PE buffer, copy into HBM."""
        events: list[Any] = []
        if req.pe_buf_bytes > 0:
            nbytes, req.pe_buf_bytes = req.pe_buf_bytes, 0.0
            events.extend(self.sim.reads.free(now, req.pe.node, nbytes) or ())
        if self.sim.free_io:
            events.extend(self.sim.decode.join(now, req) or ())
            return events
        end = req.de.rx.reserve(now, req.prompt * self.kvb)
        events.append((end, self._h2d_done, req))
        return events

    def _h2d_done(self, now: float, req: SimRequest) -> Any:
        nbytes, req.de_buf_bytes = req.de_buf_bytes, 0.0
        events = list(self.sim.reads.free(now, req.de.node, nbytes) or ())
        events.extend(self.sim.decode.join(now, req) or ())
        return events
