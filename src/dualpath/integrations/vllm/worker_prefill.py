"""The connector's worker side on a prefill instance (P).

Per request (by router key) one `_Load` while its hit is prepared and loaded:

1. `PrepareLoad` (vLLM holds the request in WAITING_FOR_REMOTE_KVS): on the PE path the hit's
   Full Blocks are read from the store through this node's SNIC into the PE buffer (an I/O
   thread; the node's read queue counts the tokens meanwhile); on the DE path we wait for
   D's `RelayReady`. Either way `transfer_results` then reports the request as received.
2. `LayerLoad` (the forward that computes the request): `begin_step` sends `RelayHitPull` to D
   (DE path); `wait_for_layer(l)` copies layer l of the hit into the paged cache, from the
   PE buffer or from D's `RelayHitLayer` l, just before attention layer l runs.
3. `LayerSave`: `save_layer(l)` copies the step's token range of layer l out of the paged
   cache and queues it for D (the sender thread sends while the forward goes on).

A failure (store miss or corruption, D's `RelayAbort`, a timeout) marks the request failed: D is
told (`RelayAbort`), a waiting request is reported in `failed_recving`, a loading one reports its
hit blocks in `invalid_blocks`, and vLLM recomputes it. Requests without a stored hit only
save. Mutating calls happen on vLLM's worker thread, the relay thread and the I/O pool;
`_cond` guards the state.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dualpath.core.errors import TransferError
from dualpath.integrations.vllm.relay_link import Received
from dualpath.integrations.vllm.specs import LayerLoad, LayerSave, PrepareLoad, StepPlan
from dualpath.integrations.vllm.worker_core import WorkerCore
from dualpath.wire.relay import RelayAbort, RelayHitLayer, RelayHitPull, RelayKvLayer, RelayReady

log = logging.getLogger(__name__)


@dataclass
class _Load:
    spec: PrepareLoad
    started_s: float
    status: str = "preparing"  # preparing -> ready -> loading -> done | failed
    reported: bool = False
    buffer: np.ndarray | None = None  # PE path: [blocks, layers, tokens, bytes]
    layers: dict[int, np.ndarray] = field(default_factory=dict)  # DE path: hit layer bytes
    block_ids: tuple[int, ...] = ()


class PrefillWorker:
    """Worker side of a P instance; see the module docstring."""

    def __init__(self, core: WorkerCore) -> None:
        self.core = core
        self._cond = threading.Condition()
        self._loads: dict[str, _Load] = {}
        self._by_req: dict[str, str] = {}
        self._step_loads: list[LayerLoad] = []
        self._step_saves: list[LayerSave] = []
        self._invalid: set[int] = set()
        self._failed_reqs: set[str] = set()

    # -- vLLM's worker thread ---------------------------------------------------------------

    def begin_step(self, plan: StepPlan) -> None:
        for f in plan.forgets:
            self._forget(f.req_id, f.key, f.peer)
        for p in plan.prepares:
            self._prepare(p)
        self._step_loads = [x for x in plan.loads if self._usable(x.key)]
        self._step_saves = [x for x in plan.saves if x.key not in self._failed_keys()]
        for ld in self._step_loads:
            with self._cond:
                load = self._loads[ld.key]
                load.status = "loading"
                load.block_ids = ld.block_ids
            if ld.side == "de":
                self.core.send_now(load.spec.peer, RelayHitPull(key=ld.key))

    def wait_for_layer(self, layer: int) -> None:
        for ld in self._step_loads:
            with self._cond:
                load = self._loads.get(ld.key)
            if load is None or load.status != "loading":
                continue
            data = self._layer_data(load, layer)
            if data is None:
                continue
            paged = self.core.paged
            tokens = paged.from_bytes(data)
            ids = torch.tensor(ld.block_ids, dtype=torch.long)
            paged.scatter(self.core.kv_caches[layer], ids, tokens)

    def save_layer(self, layer: int, kv_layer: torch.Tensor) -> None:
        paged = self.core.paged
        n = self.core.geometry.block_tokens
        for sv in self._step_saves:
            ids = torch.tensor(sv.block_ids, dtype=torch.long)
            offset = sv.start_token - (sv.start_token // n) * n
            count = sv.end_token - sv.start_token
            tokens = paged.gather(kv_layer, ids)[offset:offset + count]
            payload = paged.to_bytes(tokens)
            msg = RelayKvLayer(key=sv.key, layer=layer, start_token=sv.start_token, num_tokens=count)
            self.core.send_later(sv.peer, msg, payload)
            self.core.stats.add(kv_bytes_sent=payload.nbytes)

    def end_step(self) -> None:
        for ld in self._step_loads:
            with self._cond:
                load = self._loads.get(ld.key)
                if load is not None and load.status == "loading":
                    load.status = "done"
                    load.buffer = None
                    load.layers.clear()
                    self.core.stats.add(hit_tokens_loaded=len(ld.block_ids)
                                        * self.core.geometry.block_tokens, relays_ok=1)
            self.core.buffers.release(ld.key)
        self._step_loads = []
        self._step_saves = []

    def transfer_results(self) -> tuple[set[str], set[str]]:
        """(requests whose async prepare finished, those of them that failed)."""
        done: set[str] = set()
        failed: set[str] = set()
        now = time.monotonic()
        with self._cond:
            for load in self._loads.values():
                if load.reported:
                    continue
                if load.status == "preparing" and now - load.started_s > self.core.config.ready_timeout_s:
                    self._fail_locked(load, f"no RelayReady from {load.spec.peer} within "
                                            f"{self.core.config.ready_timeout_s:g} s")
                if load.status in ("ready", "failed"):
                    load.reported = True
                    done.add(load.spec.req_id)
                    if load.status == "failed":
                        failed.add(load.spec.req_id)
        self.core.parking.expire()
        return done, failed

    def invalid_blocks(self) -> set[int]:
        with self._cond:
            out, self._invalid = self._invalid, set()
        return out

    def wait_for_progress(self, timeout_s: float) -> None:
        """Block up to `timeout_s` while prepares are pending and none is ready to report
        (vLLM steps without pause while requests wait for KV; this paces that loop)."""
        with self._cond:
            pending = [ld for ld in self._loads.values() if not ld.reported]
            if pending and not any(ld.status in ("ready", "failed") for ld in pending):
                self._cond.wait(timeout_s)

    # -- relay thread -----------------------------------------------------------------------

    def on_message(self, r: Received) -> None:
        msg = r.message
        with self._cond:
            load = self._loads.get(msg.key)
            if load is None:
                if isinstance(msg, RelayReady | RelayAbort):
                    self.core.parking.park(r)
                return
            if r.sender != load.spec.peer:
                raise TransferError(f"{type(msg).__name__} for {msg.key} from {r.sender}, "
                                    f"expected {load.spec.peer}")
            self._apply_locked(load, r)

    def _apply_locked(self, load: _Load, r: Received) -> None:
        msg = r.message
        if isinstance(msg, RelayAbort):
            self._fail_locked(load, f"D aborted: {msg.reason}", tell_peer=False)
        elif isinstance(msg, RelayReady) and load.spec.side == "de" and load.status == "preparing":
            load.status = "ready"
        elif isinstance(msg, RelayHitLayer) and load.spec.side == "de" and r.payload is not None:
            hit = (load.spec.first_block + len(load.spec.hashes)) * self.core.geometry.block_tokens
            if msg.layer >= self.core.geometry.num_layers or msg.num_tokens != hit:
                self._fail_locked(load, f"bad RelayHitLayer: layer {msg.layer}, {msg.num_tokens} "
                                        f"tokens (hit is {hit})")
            elif load.status in ("ready", "loading"):
                load.layers[msg.layer] = r.payload
        self._cond.notify_all()

    # -- helpers ----------------------------------------------------------------------------

    def _prepare(self, p: PrepareLoad) -> None:
        load = _Load(spec=p, started_s=time.monotonic())
        with self._cond:
            self._loads[p.key] = load
            self._by_req[p.req_id] = p.key
            for r in self.core.parking.take(p.key):
                if r.sender == p.peer:
                    self._apply_locked(load, r)
        if p.side == "pe":
            self.core.submit(lambda: self._read_pe(load))

    def _read_pe(self, load: _Load) -> None:
        g = self.core.geometry
        hashes = list(load.spec.hashes)
        try:
            buf = self.core.buffers.allocate(load.spec.key, (len(hashes), *g.full_block_shape),
                                             timeout_s=self.core.config.ready_timeout_s)
        except TransferError as exc:
            with self._cond:
                self._fail_locked(load, str(exc))
            return
        got = self.core.store.get_many(hashes, outs=[buf[i] for i in range(len(hashes))])
        missing = sum(b is None for b in got)
        self.core.stats.add(bytes_read_pe_path=(len(hashes) - missing) * g.full_block_bytes)
        with self._cond:
            if load.status != "preparing":  # failed or forgotten meanwhile
                self.core.buffers.release(load.spec.key)
                return
            if missing:
                self._fail_locked(load, f"{missing} of {len(hashes)} hit blocks missing or "
                                        "corrupt in the store")
                return
            load.buffer = buf
            load.status = "ready"
            self._cond.notify_all()

    def _layer_data(self, load: _Load, layer: int) -> np.ndarray | None:
        if load.spec.side == "pe":
            assert load.buffer is not None
            return load.buffer[:, layer]
        deadline = time.monotonic() + self.core.config.layer_timeout_s
        with self._cond:
            while layer not in load.layers and load.status == "loading":
                left = deadline - time.monotonic()
                if left <= 0:
                    self._fail_locked(load, f"hit layer {layer} did not arrive within "
                                            f"{self.core.config.layer_timeout_s:g} s")
                    break
                self._cond.wait(left)
            if load.status != "loading":
                return None
            data = load.layers.pop(layer)
        first = load.spec.first_block * self.core.geometry.block_tokens
        return data[first:]

    def _usable(self, key: str) -> bool:
        with self._cond:
            load = self._loads.get(key)
            return load is not None and load.status == "ready"

    def _failed_keys(self) -> set[str]:
        with self._cond:
            return {k for k, ld in self._loads.items() if ld.status == "failed"}

    def _fail_locked(self, load: _Load, reason: str, *, tell_peer: bool = True) -> None:
        if load.status in ("failed", "done"):
            return
        was_loading = load.status == "loading"
        load.status = "failed"
        load.buffer = None
        load.layers.clear()
        self.core.buffers.release(load.spec.key)
        if was_loading:
            self._invalid.update(load.block_ids)
        log.warning("request %s: relay given up, vLLM recomputes it: %s", load.spec.key, reason)
        self.core.stats.add(relays_failed=1)
        if tell_peer:
            self.core.send_later(load.spec.peer, RelayAbort(key=load.spec.key, reason=reason[:2000]))
        self._cond.notify_all()

    def _forget(self, req_id: str, key: str, peer: str) -> None:
        with self._cond:
            load = self._loads.pop(key, None)
            self._by_req.pop(req_id, None)
            if load is not None and load.status not in ("done", "failed"):
                load.status = "failed"
                self.core.send_later(peer, RelayAbort(key=key, reason="request ended on P"))
        self.core.buffers.release(key)
        self.core.parking.take(key)
