"""Storage reads: a placed turn's cached prefix, over a node's SNIC into its DRAM buffer.

Each node serves `read_slots_per_node` reads at a time (FIFO beyond that; the SNIC is shared
by processor sharing among them) and admits a read only when its bounded buffer has room
(a read larger than the whole buffer goes alone into an empty one, so nothing waits forever).
A decode node's read also reserves room for the miss tokens' KV the prefill engine sends
back (DESIGN.md 2: it is merged there), so a DE-path turn never waits for buffer room later.
Buffer room is returned by `free`: a prefill node's when the turn's KV has left for the
decode engine, a decode node's when the decode engine has copied the prompt KV into HBM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dualpath.sim.link import LO
from dualpath.sim.state import Node, SimRequest

if TYPE_CHECKING:
    from dualpath.sim.simulator import Simulator


class StorageReads:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.kvb = sim.kvb
        self.slots = sim.cfg.read_slots_per_node
        # A stored block's header crosses the SNIC with its KV (`SimConfig.block_header_bytes`).
        self.block = sim.cfg.block_tokens
        self.header = sim.cfg.block_header_bytes
        hw = sim.hw
        # A shared host's CPU per byte read (and, on a decode node, sent on to the prefill
        # engine): `HardwareSpec.engine_read_cpu_s_per_byte` / `engine_send_cpu_s_per_byte`.
        self.cpu = sim.cpu if hw.engine_read_cpu_s_per_byte > 0 or hw.engine_send_cpu_s_per_byte > 0 else None
        self.read_cpu = hw.engine_read_cpu_s_per_byte
        self.send_cpu = hw.engine_send_cpu_s_per_byte

    def queue(self, now: float, req: SimRequest, node: Node, tokens: int) -> Any:
        node.read_wait.append((req, tokens))
        req.pending_reads += 1
        return self._pump(now, node)

    def _pump(self, now: float, node: Node) -> Any:
        events: list[Any] = []
        wait = node.read_wait
        kvb = self.kvb
        decode = node.role == "decode"
        while wait and node.reads_active < self.slots:
            req, tokens = wait[0]
            nbytes = tokens * kvb
            need = nbytes + req.miss * kvb if decode else nbytes
            if need > node.buf_free and node.buf_free < node.buf_total:
                break  # bounded DRAM buffer: wait until prefill/decode frees some
            wait.popleft()
            node.buf_free -= need
            if node.buf_free < node.buf_min_free:
                node.buf_min_free = node.buf_free
            if decode:
                req.de_buf_bytes += need
            else:
                req.pe_buf_bytes += need
            node.reads_active += 1
            wire = nbytes + tokens // self.block * self.header
            events.extend(node.snic.add(now, wire, (req, node, tokens), LO) or ())
            if self.cpu is not None:
                work = wire * self.read_cpu + (nbytes * self.send_cpu if decode else 0.0)
                events.extend(self.cpu.job(now, work))
        return events

    def io_cpu(self, now: float, pe_tokens: int, de_tokens: int) -> list[Any]:
        """The engines' CPU for reads that take no time (free I/O): each side's reader."""
        if self.cpu is None:
            return []
        wire = (self.kvb + self.header / self.block) * self.read_cpu  # per token read
        events = self.cpu.job(now, pe_tokens * wire)
        events.extend(self.cpu.job(now, de_tokens * (wire + self.kvb * self.send_cpu)))
        return events

    def on_read_done(self, now: float, token: tuple[SimRequest, Node, int]) -> Any:
        req, node, tokens = token
        node.reads_active -= 1
        self.sim.charge_node(node.nid, -tokens)
        req.pending_reads -= 1
        events: list[Any] = list(self._pump(now, node) or ())
        if req.pending_reads == 0:
            events.extend(self.complete(now, req) or ())
        return events

    def complete(self, now: float, req: SimRequest) -> Any:
        """The prefix is in the buffer(s): the turn is ready at its prefill engine."""
        req.read_done_s = now
        return self.sim.prefill.ready(now, req)

    def free(self, now: float, node: Node, nbytes: float) -> Any:
        """Return buffer room; waiting KV streams (decode nodes) go first, then reads."""
        if nbytes <= 0:
            return None
        node.buf_free += nbytes
        events: list[Any] = []
        if node.room_wait:
            events.extend(self.sim.transfer.pump_room(now, node) or ())
        events.extend(self._pump(now, node) or ())
        return events
