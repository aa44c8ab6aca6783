"""The connector's worker side on a decode instance (D).

Per request (by router key) one `_Recv` that stages the whole prompt's KV in the DE buffer,
`[blocks, layers, block_tokens, bytes]` (Full Blocks, as the store holds them):

1. `ReceivePrompt` (vLLM holds the request in WAITING_FOR_REMOTE_KVS): an I/O thread
   allocates the buffer (waiting while the bounded DE buffer is full); on the DE path it
   reads the hit's Full Blocks from the store through this node's SNIC into the buffer and
   sends `RelayReady` to P. Messages that came before (parked) are applied.
2. `RelayHitPull` from P (DE path): an I/O thread streams the hit to P, one `RelayHitLayer` per layer.
3. `RelayKvLayer` from P: the token range of one layer is written into the buffer (P sends hit +
   miss on the PE path, miss only on the DE path). Every range is checked: right sender,
   inside the prompt, not before what P must send, never twice.
4. When every layer holds every token, `transfer_results` (vLLM's worker thread, between
   forwards) copies the buffer into the request's paged blocks once, hands the buffer to an
   I/O thread that persists the full prompt blocks past the stored hit, and reports the
   request as received: vLLM then decodes it (after recomputing the last prompt token).
5. `PersistBlock` (after a forward): the block is copied out of the paged cache and written.

A failure (P's `RelayAbort`, a timeout, a store miss, a protocol violation) is reported in
`failed_recving`; P is told, the buffer freed, and vLLM recomputes the prompt itself.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from dualpath.core.errors import TransferError
from dualpath.integrations.vllm.relay_link import Received
from dualpath.integrations.vllm.specs import PersistBlock, ReceivePrompt, StepPlan
from dualpath.integrations.vllm.worker_core import WorkerCore
from dualpath.wire.relay import RelayAbort, RelayHitLayer, RelayHitPull, RelayKvLayer, RelayReady

log = logging.getLogger(__name__)


@dataclass
class _Recv:
    spec: ReceivePrompt
    coverage: np.ndarray  # [layers, prompt_tokens] bool: token KV present in the buffer
    last_activity_s: float
    status: str = "setup"  # setup -> receiving -> complete -> done | failed
    buffer: np.ndarray | None = None
    hit_ready: bool = False
    pull_pending: bool = False
    reported: bool = False


class DecodeWorker:
    """Worker side of a D instance; see the module docstring."""

    def __init__(self, core: WorkerCore) -> None:
        self.core = core
        self._lock = threading.Condition()
        self._recvs: dict[str, _Recv] = {}
        self._persists: list[PersistBlock] = []

    # -- vLLM's worker thread ---------------------------------------------------------------

    def begin_step(self, plan: StepPlan) -> None:
        for f in plan.forgets:
            self._forget(f.key, f.peer)
        for spec in plan.receives:
            self._receive(spec)
        self._persists = list(plan.persists)

    def end_step(self) -> None:
        """After the forward: write the blocks that became full this step."""
        if not self._persists:
            return
        paged = self.core.paged
        g = self.core.geometry
        for p in self._persists:
            ids = torch.tensor([p.block_id], dtype=torch.long)
            block = np.empty(g.full_block_shape, dtype=np.uint8)
            for layer, kv in enumerate(self.core.kv_caches):
                block[layer] = paged.to_bytes(paged.gather(kv, ids))
            self.core.submit(functools.partial(self._put, [(p.block_hash, block, p.parent_hash)]))
        self._persists = []

    def transfer_results(self) -> tuple[set[str], set[str]]:
        """(requests whose prompt KV is in the paged cache or failed, those that failed)."""
        done: set[str] = set()
        failed: set[str] = set()
        now = time.monotonic()
        timeout = self.core.config.kv_wait_timeout_s
        with self._lock:
            for rc in self._recvs.values():
                if rc.reported:
                    continue
                if rc.status in ("setup", "receiving") and now - rc.last_activity_s > timeout:
                    self._fail_locked(rc, f"no KV from {rc.spec.peer} for {timeout:g} s")
                if rc.status == "complete":
                    self._to_cache(rc)
                if rc.status in ("done", "failed"):
                    rc.reported = True
                    done.add(rc.spec.req_id)
                    if rc.status == "failed":
                        failed.add(rc.spec.req_id)
        self.core.parking.expire()
        return done, failed

    def wait_for_progress(self, timeout_s: float) -> None:
        """Block up to `timeout_s` while receives are pending and none is ready to report
        (vLLM steps without pause while requests wait for KV; this paces that loop)."""
        with self._lock:
            pending = [rc for rc in self._recvs.values() if not rc.reported]
            if pending and not any(rc.status in ("complete", "failed") for rc in pending):
                self._lock.wait(timeout_s)

    # -- relay thread -----------------------------------------------------------------------

    def on_message(self, r: Received) -> None:
        with self._lock:
            rc = self._recvs.get(r.message.key)
            if rc is not None and rc.status != "setup":
                self._apply_locked(rc, r)
                return
            if self.core.parking.park(r):
                return
            if rc is not None:
                self._fail_locked(rc, "parking for early messages is full")
            else:
                log.warning("dropping %s for unknown request %s: parking full",
                            type(r.message).__name__, r.message.key)

    def _apply_locked(self, rc: _Recv, r: Received) -> None:
        msg = r.message
        if r.sender != rc.spec.peer:
            self._fail_locked(rc, f"{type(msg).__name__} from {r.sender}, expected {rc.spec.peer}")
            return
        if rc.status not in ("receiving", "complete"):
            return
        rc.last_activity_s = time.monotonic()
        if isinstance(msg, RelayAbort):
            self._fail_locked(rc, f"P aborted: {msg.reason}", tell_peer=False)
        elif isinstance(msg, RelayHitPull):
            if rc.spec.side != "de" or rc.spec.hit_tokens == 0:
                self._fail_locked(rc, "RelayHitPull for a request without a DE-path hit")
            elif rc.hit_ready:
                self.core.submit_stream(lambda: self._stream_hit(rc))
            else:
                rc.pull_pending = True
        elif isinstance(msg, RelayKvLayer) and r.payload is not None:
            self._write_locked(rc, msg, r.payload)
        else:
            self._fail_locked(rc, f"unexpected {type(msg).__name__}")

    def _write_locked(self, rc: _Recv, msg: RelayKvLayer, payload: np.ndarray) -> None:
        s, g = rc.spec, self.core.geometry
        need_from = s.hit_tokens if s.side == "de" else 0
        start, end = msg.start_token, msg.start_token + msg.num_tokens
        if msg.layer >= g.num_layers or start < need_from or end > s.prompt_tokens:
            self._fail_locked(rc, f"RelayKvLayer layer {msg.layer} tokens [{start}, {end}) outside "
                                  f"[{need_from}, {s.prompt_tokens})")
            return
        if rc.coverage[msg.layer, start:end].any():
            self._fail_locked(rc, f"RelayKvLayer layer {msg.layer} tokens [{start}, {end}) twice")
            return
        assert rc.buffer is not None
        n = g.block_tokens
        t = start
        while t < end:
            b, off = divmod(t, n)
            k = min(end - t, n - off)
            rc.buffer[b, msg.layer, off:off + k] = payload[t - start:t - start + k]
            t += k
        rc.coverage[msg.layer, start:end] = True
        self.core.stats.add(kv_bytes_received=payload.nbytes)
        if rc.hit_ready and rc.coverage[:, need_from:].all():
            rc.status = "complete"
            self._lock.notify_all()

    # -- I/O threads --------------------------------------------------------------------------

    def _receive(self, spec: ReceivePrompt) -> None:
        g = self.core.geometry
        rc = _Recv(spec=spec, coverage=np.zeros((g.num_layers, spec.prompt_tokens), dtype=bool),
                   last_activity_s=time.monotonic())
        if spec.side == "pe" or spec.hit_tokens == 0:
            rc.hit_ready = True
        with self._lock:
            self._recvs[spec.key] = rc
        self.core.submit(lambda: self._setup(rc))

    def _setup(self, rc: _Recv) -> None:
        s, g = rc.spec, self.core.geometry
        num_blocks = -(-s.prompt_tokens // g.block_tokens)
        try:
            buf = self.core.buffers.allocate(s.key, (num_blocks, *g.full_block_shape),
                                             timeout_s=self.core.config.kv_wait_timeout_s)
        except TransferError as exc:
            with self._lock:
                self._fail_locked(rc, str(exc))
            return
        with self._lock:
            if rc.status != "setup":
                self.core.buffers.release(s.key)
                return
            rc.buffer = buf
            rc.status = "receiving"
            for r in self.core.parking.take(s.key):
                self._apply_locked(rc, r)
        if s.side == "de" and s.hit_tokens > 0:
            self._read_hit(rc, buf)

    def _read_hit(self, rc: _Recv, buf: np.ndarray) -> None:
        s, g = rc.spec, self.core.geometry
        hit_blocks = s.hit_tokens // g.block_tokens
        hashes = list(s.hashes[:hit_blocks])
        got = self.core.store.get_many(hashes, outs=[buf[i] for i in range(hit_blocks)])
        missing = sum(b is None for b in got)
        self.core.stats.add(bytes_read_de_path=(hit_blocks - missing) * g.full_block_bytes)
        with self._lock:
            if rc.status not in ("receiving", "complete"):
                return
            if missing:
                self._fail_locked(rc, f"{missing} of {hit_blocks} hit blocks missing or corrupt")
                return
            rc.coverage[:, :s.hit_tokens] = True
            rc.hit_ready = True
            rc.last_activity_s = time.monotonic()
            pull = rc.pull_pending
            if rc.coverage.all():
                rc.status = "complete"
                self._lock.notify_all()
        self.core.send_now(s.peer, RelayReady(key=s.key))
        if pull:
            self.core.submit_stream(lambda: self._stream_hit(rc))

    def _stream_hit(self, rc: _Recv) -> None:
        s, g = rc.spec, self.core.geometry
        hit_blocks = s.hit_tokens // g.block_tokens
        for layer in range(g.num_layers):
            with self._lock:
                if rc.buffer is None or rc.status not in ("receiving", "complete"):
                    return
                data = np.ascontiguousarray(rc.buffer[:hit_blocks, layer]).reshape(
                    s.hit_tokens, g.bytes_per_token_per_layer)
            if not self.core.send_now(s.peer, RelayHitLayer(key=s.key, layer=layer,
                                                       num_tokens=s.hit_tokens), data):
                with self._lock:
                    self._fail_locked(rc, "cannot send the hit to P")
                return
            self.core.stats.add(hit_bytes_relayed=data.nbytes)

    def _put(self, items: list[tuple[str, np.ndarray, str | None]]) -> None:
        for block_hash, block, parent in items:  # with its parent: the store's prefix trie
            self.core.store.put(block_hash, block, parent)
        self.core.stats.add(blocks_persisted=len(items),
                            bytes_persisted=sum(b.nbytes for _, b, _ in items))

    # -- helpers ----------------------------------------------------------------------------

    def _to_cache(self, rc: _Recv) -> None:
        """Copy the staged prompt KV into the paged cache (vLLM's worker thread, lock held)."""
        s, g = rc.spec, self.core.geometry
        assert rc.buffer is not None
        paged = self.core.paged
        first = s.first_token // g.block_tokens
        ids = torch.tensor(s.block_ids[first:], dtype=torch.long)
        for layer, kv in enumerate(self.core.kv_caches):
            paged.scatter(kv, ids, paged.from_bytes(rc.buffer[first:, layer]))
        full = s.prompt_tokens // g.block_tokens
        hit_blocks = s.hit_tokens // g.block_tokens
        buf, key = rc.buffer, s.key
        items = [(s.hashes[b], buf[b], s.hashes[b - 1] if b else None)
                 for b in range(hit_blocks, full)]
        rc.buffer = None
        rc.status = "done"
        self.core.stats.add(relays_ok=1)

        def persist() -> None:
            try:
                if items:
                    self._put(items)
            finally:
                self.core.buffers.release(key)

        self.core.submit(persist)

    def _fail_locked(self, rc: _Recv, reason: str, *, tell_peer: bool = True) -> None:
        if rc.status in ("failed", "done"):
            return
        rc.status = "failed"
        rc.buffer = None
        self._lock.notify_all()
        self.core.buffers.release(rc.spec.key)
        log.warning("request %s: relay given up, vLLM recomputes it: %s", rc.spec.key, reason)
        self.core.stats.add(relays_failed=1)
        if tell_peer:
            self.core.send_later(rc.spec.peer, RelayAbort(key=rc.spec.key, reason=reason[:2000]))

    def _forget(self, key: str, peer: str) -> None:
        with self._lock:
            rc = self._recvs.pop(key, None)
            if rc is None:
                self.core.parking.take(key)
                self.core.send_later(peer, RelayAbort(key=key, reason="request not relayed on D"))
                return
            if rc.status not in ("done", "failed"):
                self._fail_locked(rc, "request ended on D before its KV arrived")
        self.core.parking.take(key)
