"""The prefill engine (PE): loads hit KV (PE path) or receives it from the DE (DE path),
computes the miss tokens layer by layer, and streams KV to the request's decode engine.

PE read path:  store --SNIC--> PE buffer (Full Blocks) --CNIC, per layer--> model;
               every layer's KV of *all* prompt tokens (hit + miss) --CNIC--> DE buffer.
DE read path:  the DE streams each layer's hit KV --CNIC--> PE just before it is needed;
               only the miss tokens' new KV of each layer goes back to the DE.
Without layerwise prefill (`basic`), the whole prefix is moved into the model before the
first layer runs. Work is packed into steps by `form_prefill_batch` under the compute quota;
a request that does not fit is chunk-prefilled.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dualpath.core.errors import GrammarError, TransferError
from dualpath.engine.base import EngineBase
from dualpath.engine.early_messages import EarlyMessages
from dualpath.engine.token_picker import TokenPicker
from dualpath.model.kv_bytes import kv_from_bytes, kv_to_bytes
from dualpath.scheduler import FlopsAttentionPredictor, PrefillWork, form_prefill_batch
from dualpath.transfer.base import Message
from dualpath.transfer.curve import engine_of
from dualpath.transfer.nic import Direction, TrafficClass
from dualpath.wire import FrameRejected
from dualpath.wire import control as ctl
from dualpath.wire.data import HitLayer, HitReady, KvLayer, PrefillFailed, PrefillResult
from dualpath.wire.types import AttemptId

logger = logging.getLogger(__name__)


class _PeerSilent(TransferError):
    """The DE's hit KV for a request did not come in time."""


class TaskState(enum.Enum):
    READING = "reading"  # the hit prefix is being read (PE path) or awaited from the DE
    READY = "ready"  # prefill may run
    FAILED = "failed"  # reported as a failed transfer; dropped on the loop thread


@dataclass
class PrefillTask:
    """A request at this PE. Fields after `assign` are mutated by the loop / reader threads."""

    assign: ctl.AssignPrefill
    state: TaskState = TaskState.READING
    hit_tokens: int = 0
    blocks: list[np.ndarray] = field(default_factory=list)  # PE path: Full Blocks read
    hit_layers: dict[int, list[np.ndarray]] = field(default_factory=dict)  # DE path
    computed: int = 0  # miss tokens computed so far (chunked prefill)
    kv: list[torch.Tensor] = field(default_factory=list)  # per layer, for later chunks
    aborted: bool = False
    assigned_s: float = field(default_factory=time.monotonic)

    @property
    def rid(self) -> AttemptId:
        return self.assign.attempt

    @property
    def prompt_len(self) -> int:
        return len(self.assign.prompt_token_ids)


class PrefillEngine(EngineBase):
    role = "prefill"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._tasks: dict[AttemptId, PrefillTask] = {}  # FIFO by insertion
        self._cond = threading.Condition()
        # Data can overtake control: the DE may answer before our AssignPrefill is read.
        self._early = EarlyMessages()
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pe-read")
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pe-h2d")
        self.predictor = self._profile()
        # Forwards (chunks) run and the loop thread's CPU seconds in them (`runtime_profile`
        # fits the prefill compute model on it).
        self.forwards = 0
        self.forward_cpu_s = 0.0

    # ---- control ---------------------------------------------------------------------------

    def on_control(self, msg: ctl.ToEngine) -> None:
        if isinstance(msg, ctl.AssignPrefill):
            task = PrefillTask(msg)
            with self._cond:
                self._tasks[msg.attempt] = task
                for early in self._early.take(msg.attempt):
                    try:
                        self._apply_data(task, early)
                    except FrameRejected as exc:
                        self.rejections.count(exc.reason)
            if not msg.hit_hashes:
                task.state = TaskState.READY
            elif msg.read_path == "pe":
                self._readers.submit(self._read_blocks, task)
            # DE path: HitReady from the DE makes it ready.
        elif isinstance(msg, ctl.Abort):
            with self._cond:
                self._early.forget(msg.attempt)
                gone = self._tasks.pop(msg.attempt, None)
                if gone is not None:
                    gone.aborted = True
                    self._cond.notify_all()
            self.sender.drop(msg.attempt)
            self.buffer.release(msg.attempt)

    def _read_blocks(self, task: PrefillTask) -> None:
        """PE read path: Full Blocks from storage into the PE buffer (reader thread)."""
        task.blocks = self.read_hit_blocks(task.rid, task.assign.hit_hashes,
                                           lambda: not task.aborted)
        if task.aborted:  # the abort may have released the buffer before we reserved it
            self.buffer.release(task.rid)
        task.hit_tokens = len(task.blocks) * self.block_size
        with self._cond:
            task.state = TaskState.READY
            self._cond.notify_all()

    # ---- data plane (receiver thread) ----------------------------------------------------

    def on_data(self, msg: Message) -> None:
        h = msg.header
        if not isinstance(h, HitReady | HitLayer):
            raise FrameRejected("unexpected", f"a prefill engine got {type(h).__name__}")
        with self._cond:
            task = self._tasks.get(h.attempt)
            if task is None:
                self._early.keep(h.attempt, msg)
                return
            self._apply_data(task, msg)

    def _apply_data(self, task: PrefillTask, msg: Message) -> None:
        """Apply a DE message to its task (caller holds the condition)."""
        h = msg.header
        a = task.assign
        if msg.peer is not None and engine_of(msg.peer) != a.decode_engine:
            raise FrameRejected("identity", f"{h.attempt}: hit KV from {msg.peer}, not from "  # type: ignore[union-attr]
                                            f"engine {a.decode_engine}")
        if isinstance(h, HitReady):
            if h.hit_tokens > len(a.hit_hashes) * self.block_size or h.hit_tokens % self.block_size:
                raise FrameRejected("invalid", f"{h.attempt}: {h.hit_tokens} hit tokens for "
                                               f"{len(a.hit_hashes)} blocks")
            if task.state == TaskState.READING:
                task.hit_tokens = h.hit_tokens
                task.state = TaskState.READY
        elif isinstance(h, HitLayer):
            self._check_hit_layer(task, h.layer, msg.payload)
            task.hit_layers[h.layer] = msg.payload
        self._cond.notify_all()

    def _check_hit_layer(self, task: PrefillTask, layer: int, parts: list[np.ndarray]) -> None:
        """A hit layer is one [block_tokens, B] uint8 array per hit block, of a real layer."""
        width = self.model_config.kv_bytes_per_token_per_layer
        if layer >= self.model_config.num_layers or len(parts) > len(task.assign.hit_hashes):
            raise FrameRejected("invalid", f"{task.rid}: hit layer {layer} with {len(parts)} "
                                           f"blocks does not fit the request")
        for part in parts:
            if part.dtype != np.uint8 or part.shape != (self.block_size, width):
                raise FrameRejected("invalid", f"{task.rid}: hit block of shape {part.shape} "
                                               f"{part.dtype}, expected ({self.block_size}, "
                                               f"{width}) uint8")

    # ---- the loop --------------------------------------------------------------------------

    def load(self) -> tuple[int, int]:
        with self._cond:
            return len(self._tasks), sum(t.prompt_len for t in self._tasks.values())

    def step(self) -> bool:
        self._expire_hit_waits()
        with self._cond:
            ready = [t for t in self._tasks.values() if t.state == TaskState.READY]
        if not ready:
            return False
        queue = [PrefillWork(i, t.hit_tokens, t.prompt_len - t.hit_tokens, t.computed)
                 for i, t in enumerate(ready)]
        plan = form_prefill_batch(queue, self.config.prefill_quota_s, self.predictor,
                                  align_tokens=self.block_size)
        for item in plan.items:
            task = ready[int(item.request_id)]
            cpu0 = time.thread_time()
            self.forwards += 1
            try:
                self._run_chunk(task, item.chunk_tokens, item.last_chunk)
            except _PeerSilent as exc:
                self._peer_failed(task, str(exc))
            except (TransferError, GrammarError) as exc:
                self._fail(task, str(exc))
            except Exception as exc:  # a bad request must not take the engine down
                logger.exception("prefill of %s crashed", task.rid)
                self._fail(task, f"{type(exc).__name__}: {exc}")
            self.forward_cpu_s += time.thread_time() - cpu0
        return True

    def _run_chunk(self, task: PrefillTask, chunk: int, last: bool) -> None:
        a = task.assign
        start = task.hit_tokens + task.computed
        ids = a.prompt_token_ids[start:start + chunk]
        first_chunk = task.computed == 0
        past = self._past(task) if first_chunk and task.hit_tokens else (task.kv or None)
        used_past: dict[int, torch.Tensor] = {}
        if callable(past) and not last:
            source = past

            def recording(layer: int) -> torch.Tensor:
                used_past[layer] = source(layer)
                return used_past[layer]

            past = recording
        elif isinstance(past, list):
            used_past = dict(enumerate(past))
        send_hit = first_chunk and a.read_path == "pe" and task.hit_tokens > 0
        layers_kv: list[torch.Tensor] = []
        collective = self.config.collective_bytes_per_token * chunk

        def on_layer(layer: int, kv_new: torch.Tensor) -> None:
            if collective:
                self.cnic.transmit(collective, TrafficClass.MODEL, Direction.TX)
            if not last:
                layers_kv.append(kv_new)
            new_bytes = kv_to_bytes(kv_new)
            if send_hit:
                payload = [b[layer] for b in task.blocks] + [new_bytes]
                header = KvLayer(a.attempt, layer, 0, task.hit_tokens + chunk)
            else:
                payload = [new_bytes]
                header = KvLayer(a.attempt, layer, start, chunk)
            self.sender.submit(a.decode_address, header, payload)

        out = self.model.prefill(ids, start_pos=start, past=past, on_layer_kv=on_layer,
                                 logits="last" if last else "none")
        if not last:
            task.kv = [torch.cat((used_past[i], kv_i), dim=0) if i in used_past else kv_i
                       for i, kv_i in enumerate(layers_kv)]
            task.computed += chunk
            return
        assert out.logits is not None
        # The same picker the DE runs (penalties over the prompt, the grammar resumed over a
        # retry's streamed tokens, the seeded step), so the first token obeys the request.
        picker = TokenPicker(a.sampling, a.prompt_token_ids, self.model_config.vocab_size,
                             self.guides)
        first = picker.pick(out.logits, tuple(a.banned_first_token_ids))
        self.sender.submit(a.decode_address, PrefillResult(
            a.attempt, first.token, task.prompt_len, task.hit_tokens, first.logprobs))
        self._finish(task)

    def _past(self, task: PrefillTask) -> list[torch.Tensor] | Callable[[int], torch.Tensor]:
        """The hit prefix for the first chunk: layer by layer, or whole (non-layerwise)."""
        layers = range(self.model_config.num_layers)
        if not task.assign.layerwise:
            return [self._await(self._prefetch.submit(self._hit_layer, task, i))
                    for i in layers]
        # Layerwise: copy layer i+1 into the model while layer i computes.
        futures = {0: self._prefetch.submit(self._hit_layer, task, 0)}

        def source(layer: int) -> torch.Tensor:
            if layer + 1 < self.model_config.num_layers:
                futures[layer + 1] = self._prefetch.submit(self._hit_layer, task, layer + 1)
            return self._await(futures.pop(layer))

        return source

    def _await(self, future: Future[torch.Tensor]) -> torch.Tensor:
        """A hit layer, from the loop thread: while it is not here (the DE streams it), Aborts
        are acted on, so an aborted request's wait ends instead of blocking the engine."""
        while True:
            try:
                return future.result(timeout=0.05)
            except FutureTimeout:
                self.handle_aborts_now()

    def _hit_layer(self, task: PrefillTask, layer: int) -> torch.Tensor:
        """Layer `layer` of the hit KV as a tensor, after its bytes crossed the CNIC."""
        if task.assign.read_path == "pe":
            parts = [b[layer] for b in task.blocks]
            # Host buffer -> "GPU": all GPU traffic goes through the engine's CNIC (KV class).
            self.cnic.transmit(sum(p.nbytes for p in parts), TrafficClass.KV, Direction.RX)
        else:
            parts = self._wait_hit_layer(task, layer)
        arr = np.concatenate(parts, axis=0)[: task.hit_tokens]
        return kv_from_bytes(arr, self.model_config)

    def _wait_hit_layer(self, task: PrefillTask, layer: int) -> list[np.ndarray]:
        deadline = time.monotonic() + self.config.peer_timeout_s
        with self._cond:
            while layer not in task.hit_layers:
                if task.aborted:
                    raise TransferError(f"request {task.rid} aborted")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _PeerSilent(f"request {task.rid}: hit KV of layer {layer} never "
                                      f"arrived from the decode engine")
                self._cond.wait(min(remaining, 0.1))
            return task.hit_layers.pop(layer)

    def _expire_hit_waits(self) -> None:
        """DE read path: a request whose DE never said how much hit KV it sends is failed
        (reported to the scheduler) after `kv_wait_timeout_s` instead of waiting forever."""
        now = time.monotonic()
        with self._cond:
            silent = [t for t in self._tasks.values() if t.state == TaskState.READING
                      and t.assign.read_path == "de"
                      and now - t.assigned_s > self.config.kv_wait_timeout_s]
        for task in silent:
            self._peer_failed(task, f"request {task.rid}: no hit KV notice from the decode "
                                    f"engine within {self.config.kv_wait_timeout_s:g} s")

    def _peer_failed(self, task: PrefillTask, error: str) -> None:
        """Report the attempt's transfer failed; the loop then drops the task (as an Abort)."""
        with self._cond:
            task.state = TaskState.FAILED
        self.report_transfer_failed(task.rid, task.assign.decode_address, error)

    def _finish(self, task: PrefillTask) -> None:
        with self._cond:
            self._tasks.pop(task.rid, None)
            self._early.forget(task.rid)
        self.buffer.release(task.rid)
        self.send_control(ctl.PrefillDone(self.engine_id, task.rid, task.hit_tokens))

    def _fail(self, task: PrefillTask, error: str) -> None:
        logger.error("prefill of %s failed: %s", task.rid, error)
        if not task.aborted:
            self.sender.submit(task.assign.decode_address, PrefillFailed(task.rid, error[:4096]))
        self._finish(task)

    def _profile(self) -> FlopsAttentionPredictor:
        """Fit the batch-time predictor from a few real prefills of this model, this machine."""
        c = self.model_config
        samples = []
        vocab = min(c.vocab_size, 1000)
        ids = [(7 * i + 3) % vocab for i in range(384)]
        kv: dict[int, Any] = {}  # prompt length -> its KV, reused as a later sample's context
        for ctx, new in ((0, 32), (0, 128), (128, 128), (0, 384)):
            t0 = time.perf_counter()
            out = self.model.prefill(ids[ctx:ctx + new], start_pos=ctx, past=kv.get(ctx),
                                     logits="last")
            samples.append(([(ctx, new)], time.perf_counter() - t0))
            if ctx == 0:
                kv[new] = out.new_kv
        self._tokens_per_s = 384 / samples[-1][1]
        predictor = FlopsAttentionPredictor.fit(c.num_layers, c.num_heads, c.head_dim, samples)
        logger.info("prefill predictor: %.3g FLOP/s + %.3g s", predictor.flops_per_s,
                    predictor.overhead_s)
        return predictor

    def prefill_tokens_per_s(self) -> float:
        return self._tokens_per_s

    def extra_counters(self) -> dict[str, float]:
        with self._cond:
            parked = self._early.parked
        return {"bytes_read_pe_path": float(self.bytes_read), "early.parked": float(parked),
                "prefill.forwards": float(self.forwards), "prefill.cpu_s": self.forward_cpu_s}

    def shutdown(self) -> None:
        with self._cond:
            for task in self._tasks.values():
                task.aborted = True
            self._cond.notify_all()
        self._readers.shutdown(wait=False, cancel_futures=True)
        self._prefetch.shutdown(wait=False, cancel_futures=True)
