"""The decode engine (DE): receives a request's prompt KV, decodes it, persists full blocks.

DE read path: store --SNIC--> DE buffer (Full Blocks); each layer's hit KV --CNIC--> PE while
the PE prefills; the PE sends back only the miss tokens' KV, merged here. PE read path: the
PE streams every layer's KV of the whole prompt here. Either way, once every layer holds the
whole prompt and the PE's first token has arrived, the request joins the decode batch. Each
block that becomes full — prompt blocks the store did not have, then generated ones — is
persisted to the store through this node's SNIC, from a writer thread.

All paged-cache mutations happen on the loop thread: the receiver thread and the storage
reader only enqueue events for it.
"""

from __future__ import annotations

import enum
import functools
import logging
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dualpath.core.errors import GrammarError
from dualpath.core.stop_rule import FinishReason
from dualpath.engine.base import EngineBase
from dualpath.engine.early_messages import EarlyMessages
from dualpath.engine.token_picker import TokenPicker
from dualpath.kv.hashing import block_hashes
from dualpath.model.kv_bytes import kv_from_bytes
from dualpath.model.kv_cache import PagedKVCache
from dualpath.transfer.base import Message
from dualpath.transfer.curve import engine_of
from dualpath.wire import FrameRejected
from dualpath.wire import control as ctl
from dualpath.wire.data import HitLayer, HitReady, KvLayer, PrefillFailed, PrefillResult
from dualpath.wire.sampling import TokenLogprobs
from dualpath.wire.types import AttemptId

logger = logging.getLogger(__name__)


class TaskState(enum.Enum):
    WAITING = "waiting"  # for the prompt's KV and the first token
    RUNNING = "running"  # in the decode batch
    FAILED = "failed"  # reported as a failed transfer; dropped on the loop thread


@dataclass
class DecodeTask:
    assign: ctl.AssignDecode
    picker: TokenPicker  # the attempt's sampling state: penalties' history, grammar, step
    state: TaskState = TaskState.WAITING
    # Since when the KV wait has gone without news (None while our own DE-path read runs).
    waiting_since_s: float | None = None
    hit_tokens: int = 0
    layer_tokens: dict[int, int] = field(default_factory=dict)  # tokens of KV per layer
    first_token: int | None = None
    first_logprobs: TokenLogprobs | None = None
    generated: list[int] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)  # block hashes known so far
    persisted_blocks: int = 0  # leading blocks already in the store

    @property
    def rid(self) -> AttemptId:
        return self.assign.attempt

    @property
    def key(self) -> str:
        """The attempt's name in the paged KV cache."""
        return str(self.assign.attempt)

    @property
    def prompt_len(self) -> int:
        return len(self.assign.prompt_token_ids)


class DecodeEngine(EngineBase):
    role = "decode"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        per_block = self.block_size * self.model_config.kv_bytes_per_token
        num_blocks = max(1, self.config.decode_kv_bytes // per_block)
        self.cache = PagedKVCache(self.model_config, num_blocks, self.block_size)
        self._tasks: dict[AttemptId, DecodeTask] = {}
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._early = EarlyMessages()  # PE data that overtook our AssignDecode
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="de-read")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="de-persist")
        self.blocks_persisted = 0
        # Decode steps, their summed batch sizes, and the loop thread's CPU seconds spent
        # stepping vs taking in data (KV layers into the paged cache): the runtime profile
        # and `sim-vs-runtime` read them to see where a decode engine's CPU goes.
        self.decode_steps = 0
        self.decode_batch_sum = 0
        self.decode_ctx_sum = 0  # Σ over steps of the batch's context tokens
        self.decode_cpu_s = 0.0
        self.intake_cpu_s = 0.0

    def kv_capacity_tokens(self) -> int:
        return self.cache.num_free_blocks * self.block_size

    def load(self) -> tuple[int, int]:
        return len(self._tasks), sum(t.prompt_len + len(t.generated) for t in self._tasks.values())

    # ---- inputs ------------------------------------------------------------------------------

    def on_control(self, msg: ctl.ToEngine) -> None:
        if isinstance(msg, ctl.AssignDecode):
            self._assign(msg)
        elif isinstance(msg, ctl.Abort):
            task = self._tasks.pop(msg.attempt, None)
            self.sender.drop(msg.attempt)
            self._early.forget(msg.attempt)
            self.buffer.release(msg.attempt)
            if task is not None:
                self.cache.free(task.key)

    def on_data(self, msg: Message) -> None:
        if not isinstance(msg.header, KvLayer | PrefillResult | PrefillFailed):
            raise FrameRejected("unexpected", f"a decode engine got {type(msg.header).__name__}")
        self._events.put(("data", msg))

    def _assign(self, a: ctl.AssignDecode) -> None:
        need = max(a.kv_tokens, len(a.prompt_token_ids) + 1)
        error = None if self.cache.can_allocate(need) else "decode engine out of KV memory"
        picker = None
        if error is None:
            try:
                picker = TokenPicker(a.sampling, a.prompt_token_ids,
                                     self.model_config.vocab_size, self.guides)
            except GrammarError as exc:
                error = str(exc)
        if picker is None:
            self._early.forget(a.attempt)  # the PE's KV for it must not be parked forever
            self.send_control(ctl.Finished(self.engine_id, a.attempt, FinishReason.ERROR,
                                           len(a.prompt_token_ids), 0, 0,
                                           error=(error or "")[:4096]))
            return
        self.cache.allocate(str(a.attempt), need)
        task = DecodeTask(a, picker, hashes=list(a.hit_hashes))
        self._tasks[a.attempt] = task
        if a.read_path == "de" and a.hit_hashes:
            self._readers.submit(self._read_blocks, task)
        else:
            task.waiting_since_s = time.monotonic()
        for early in self._early.take(a.attempt):
            self._events.put(("data", early))

    def _read_blocks(self, task: DecodeTask) -> None:
        """DE read path (reader thread): Full Blocks from storage into the DE buffer.

        However the read ends, the PE is told how much it gets, so it never waits forever.
        """
        blocks = self.read_hit_blocks(task.rid, task.assign.hit_hashes,
                                      lambda: task.rid in self._tasks)
        hit_tokens = len(blocks) * self.block_size
        # Tell the PE how much it gets, then stream it layer by layer (the PE consumes layer
        # i just before running layer i; the CNICs pace the bytes).
        dest = task.assign.prefill_address
        self.sender.submit(dest, HitReady(task.rid, hit_tokens))
        last = self.model_config.num_layers - 1
        for layer in range(self.model_config.num_layers if blocks else 0):
            # The buffer is free again once the last layer has left.
            done = functools.partial(self._release_buffer, task.rid) if layer == last else None
            self.sender.submit(dest, HitLayer(task.rid, layer), [b[layer] for b in blocks],
                               on_done=done)
        if not blocks:
            self.buffer.release(task.rid)
        self._events.put(("loaded", (task.rid, blocks)))

    # ---- the loop ----------------------------------------------------------------------------

    def step(self) -> bool:
        t0 = time.thread_time()
        busy = self._drain_events()
        self._expire_kv_waits()
        t1 = time.thread_time()
        self.intake_cpu_s += t1 - t0
        running = [t for t in self._tasks.values() if t.state == TaskState.RUNNING]
        if running:
            batch = running[: self.config.max_decode_batch]
            self.decode_steps += 1
            self.decode_batch_sum += len(batch)
            self.decode_ctx_sum += sum(t.prompt_len + len(t.generated) for t in batch)
            try:
                self._decode(batch)
            except Exception as exc:  # fail the batch, keep the engine
                logger.exception("decode step failed")
                for task in batch:
                    if task.rid in self._tasks:
                        self._finish(task, FinishReason.ERROR,
                                     error=f"{type(exc).__name__}: {exc}")
            self.decode_cpu_s += time.thread_time() - t1
            busy = True
        return busy

    def _drain_events(self) -> bool:
        busy = False
        while True:
            try:
                kind, payload = self._events.get_nowait()
            except queue.Empty:
                return busy
            busy = True
            if kind == "loaded":
                rid, blocks = payload
                task = self._tasks.get(rid)
                if task is not None:
                    task.waiting_since_s = time.monotonic()
                    self.cache.import_blocks(task.key, blocks)
                    task.hit_tokens = len(blocks) * self.block_size
                    for layer in range(self.model_config.num_layers):
                        task.layer_tokens[layer] = max(task.layer_tokens.get(layer, 0),
                                                       task.hit_tokens)
                    self._maybe_start(task)
            else:
                try:
                    self._on_data(payload)
                except FrameRejected as exc:  # does not fit its attempt: dropped, counted
                    self.rejections.count(exc.reason)
                    logger.warning("engine %d: dropped a data message: %s", self.engine_id, exc)
                except Exception as exc:
                    logger.exception("bad data message")
                    task = self._tasks.get(payload.header.attempt)
                    if task is not None:
                        self._finish(task, FinishReason.ERROR,
                                     error=f"{type(exc).__name__}: {exc}")

    def _on_data(self, msg: Message) -> None:
        h = msg.header
        assert isinstance(h, KvLayer | PrefillResult | PrefillFailed)  # checked by on_data
        task = self._tasks.get(h.attempt)
        if task is None:
            self._early.keep(h.attempt, msg)
            return
        if msg.peer is not None and engine_of(msg.peer) != task.assign.prefill_engine:
            raise FrameRejected("identity", f"{h.attempt}: KV from {msg.peer}, not from "
                                            f"engine {task.assign.prefill_engine}")
        if task.state != TaskState.WAITING:
            raise FrameRejected("invalid", f"{h.attempt}: {type(h).__name__} after the prefill")
        if task.waiting_since_s is not None:
            task.waiting_since_s = time.monotonic()
        if isinstance(h, KvLayer):
            arr = self._layer_rows(task, h, msg.payload)
            self.cache.write(task.key, h.layer, h.start, kv_from_bytes(arr, self.model_config))
            task.layer_tokens[h.layer] = h.start + h.n
        elif isinstance(h, PrefillResult):
            if h.first_token >= self.model_config.vocab_size or h.cached_tokens > task.prompt_len:
                raise FrameRejected("invalid", f"{h.attempt}: prefill result out of range")
            if (h.logprobs is None) != (task.assign.sampling.logprobs is None):
                raise FrameRejected("invalid", f"{h.attempt}: logprobs do not match the request")
            task.first_token = h.first_token
            task.first_logprobs = h.logprobs
            task.hit_tokens = h.cached_tokens
        else:
            self._finish(task, FinishReason.ERROR, error=h.error)
            return
        self._maybe_start(task)

    def _layer_rows(self, task: DecodeTask, h: KvLayer, parts: list[np.ndarray]) -> np.ndarray:
        """The [n, B] uint8 rows a KvLayer brings, checked against the attempt's prompt."""
        width = self.model_config.kv_bytes_per_token_per_layer
        if (h.layer >= self.model_config.num_layers or h.start + h.n > task.prompt_len
                or not parts or any(p.dtype != np.uint8 or p.ndim != 2 or p.shape[1] != width
                                    for p in parts)):
            raise FrameRejected("invalid", f"{h.attempt}: KV of layer {h.layer} does not fit "
                                           f"the request")
        arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        if arr.shape[0] != h.n:
            raise FrameRejected("invalid", f"{h.attempt}: {arr.shape[0]} KV rows, header "
                                           f"says {h.n}")
        return arr

    def _expire_kv_waits(self) -> None:
        """A request whose prompt KV stopped coming for `kv_wait_timeout_s` is reported to the
        scheduler as a failed transfer (it re-runs it) instead of waiting forever."""
        now, limit = time.monotonic(), self.config.kv_wait_timeout_s
        for task in list(self._tasks.values()):
            since = task.waiting_since_s
            if task.state == TaskState.WAITING and since is not None and now - since > limit:
                task.state = TaskState.FAILED
                self.report_transfer_failed(
                    task.rid, task.assign.prefill_address,
                    f"request {task.rid}: no KV from the prefill engine for {limit:g} s")

    def _maybe_start(self, task: DecodeTask) -> None:
        """Join the decode batch once every layer holds the whole prompt and token 1 is here."""
        n = task.prompt_len
        if task.state != TaskState.WAITING or task.first_token is None:
            return
        if any(task.layer_tokens.get(i, 0) < n for i in range(self.model_config.num_layers)):
            return
        self.cache.commit(task.key, n - self.cache.num_tokens(task.key))
        task.persisted_blocks = task.hit_tokens // self.block_size
        task.state = TaskState.RUNNING
        self._emit(task, task.first_token, task.first_logprobs)

    def _decode(self, batch: list[DecodeTask]) -> None:
        last = [t.generated[-1] for t in batch]
        logits = self.model.decode(last, [self.cache.sequence(t.key) for t in batch])
        for row, task in enumerate(batch):
            picked = task.picker.pick(logits[row], task.assign.stop.banned(len(task.generated)))
            self._emit(task, picked.token, picked.logprobs)

    def _emit(self, task: DecodeTask, token: int, logprobs: TokenLogprobs | None) -> None:
        try:
            task.picker.accept(token)  # the PE's first token must obey the grammar too
        except GrammarError as exc:
            self._finish(task, FinishReason.ERROR, error=f"the answer left its grammar: {exc}")
            return
        task.generated.append(token)
        self.send_control(ctl.Tokens(self.engine_id, task.rid, [token],
                                     None if logprobs is None else [logprobs]))
        self._persist_full_blocks(task)
        reason = task.assign.stop.finish_reason(task.generated)
        if reason is None and task.picker.complete:
            reason = FinishReason.STOP  # the grammar is complete: nothing more may follow
        if reason is not None:
            self._finish(task, reason)

    def _persist_full_blocks(self, task: DecodeTask) -> None:
        """Persist every block that became full and is not in the store yet."""
        fresh = [i for i in self.cache.take_full_blocks(task.key) if i >= task.persisted_blocks]
        if not fresh or self.store is None:
            return
        tokens = [*task.assign.prompt_token_ids, *task.generated]
        while len(task.hashes) <= fresh[-1]:
            k = len(task.hashes)
            parent = task.hashes[-1] if task.hashes else None
            chunk = tokens[k * self.block_size:(k + 1) * self.block_size]
            task.hashes.extend(block_hashes(chunk, self.block_size, self.model_config.identity,
                                            parent=parent))
        for index in fresh:
            block = self.cache.export_block(task.key, index)  # a copy: safe after free
            parent = task.hashes[index - 1] if index else None
            self._writer.submit(self._put, task.hashes[index], block, parent)

    def _release_buffer(self, attempt: AttemptId) -> None:
        self.buffer.release(attempt)

    def _put(self, block_hash: str, block: np.ndarray, parent: str | None) -> None:
        assert self.store is not None  # only queued when there is a store
        try:
            self.store.put(block_hash, block, parent)
            self.blocks_persisted += 1
        except Exception:
            logger.exception("persisting block %s failed", block_hash[:16])

    def _finish(self, task: DecodeTask, reason: FinishReason, error: str | None = None) -> None:
        self._tasks.pop(task.rid, None)
        self._early.forget(task.rid)
        self.cache.free(task.key)
        self.send_control(ctl.Finished(self.engine_id, task.rid, reason, task.prompt_len,
                                       len(task.generated), task.hit_tokens,
                                       error=None if error is None else error[:4096]))

    def extra_counters(self) -> dict[str, float]:
        return {"bytes_read_de_path": float(self.bytes_read),
                "blocks_persisted": float(self.blocks_persisted),
                "kv_free_tokens": float(self.kv_capacity_tokens()),
                "early.parked": float(self._early.parked),
                "decode.steps": float(self.decode_steps),
                "decode.batch_sum": float(self.decode_batch_sum),
                "decode.ctx_sum": float(self.decode_ctx_sum),
                "decode.cpu_s": self.decode_cpu_s, "decode.intake_cpu_s": self.intake_cpu_s}

    def shutdown(self) -> None:
        self._readers.shutdown(wait=False, cancel_futures=True)
        self._writer.shutdown(wait=True)
