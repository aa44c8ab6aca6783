"""Engine-side books on the rare exit paths, on engines built without processes or models:
only the state the tested method touches is set up."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np
from local_transport import LocalHub, LocalTransport

from dualpath.core.model_config import ModelConfig
from dualpath.core.stop_rule import StopRule
from dualpath.engine.data_sender import DataSender
from dualpath.engine.decode import DecodeEngine, DecodeTask
from dualpath.engine.early_messages import EarlyMessages
from dualpath.engine.prefill import PrefillEngine, PrefillTask, TaskState
from dualpath.model.kv_cache import PagedKVCache
from dualpath.transfer.base import Message
from dualpath.transfer.buffer_pool import BufferPool
from dualpath.transfer.nic import TrafficClass
from dualpath.wire import control as ctl
from dualpath.wire.data import HitReady, KvLayer
from dualpath.wire.types import AttemptId

H0, H1 = "00" * 32, "11" * 32


def A(rid: str) -> AttemptId:
    return AttemptId(rid, 1)


def _tiny_config() -> ModelConfig:
    from dualpath.model.loader import load_model

    model, _ = load_model("tiny", seed=0)
    return model.config


def _assign_decode(rid: str, prompt_len: int, max_tokens: int) -> ctl.AssignDecode:
    return ctl.AssignDecode(
        attempt=A(rid), prompt_token_ids=list(range(prompt_len)), hit_hashes=[],
        read_path="pe", prefill_engine=0, prefill_address="pe", stop=StopRule(max_tokens),
        temperature=0.0, top_p=1.0, seed=None, kv_tokens=prompt_len + max_tokens)


def _assign_prefill(rid: str, path: str) -> ctl.AssignPrefill:
    return ctl.AssignPrefill(
        attempt=A(rid), prompt_token_ids=list(range(200)), hit_hashes=[H0, H1],
        read_path=path, decode_engine=1, decode_address="de", layerwise=True,  # type: ignore[arg-type]
        temperature=0.0, top_p=1.0, seed=None, banned_first_token_ids=[])


def test_decode_engine_refusing_a_request_does_not_park_its_kv_forever() -> None:
    de: Any = object.__new__(DecodeEngine)
    de.engine_id, de.block_size = 1, 64
    de.model_config = _tiny_config()
    de.cache = PagedKVCache(de.model_config, num_blocks=2, block_size=64)
    de._tasks, de._events, de._early = {}, queue.Queue(), EarlyMessages()
    sent: list[Any] = []
    de.send_control = sent.append
    de._assign(_assign_decode("big", 100, 100))  # needs 4 blocks, 2 exist
    assert isinstance(sent[0], ctl.Finished) and sent[0].finish_reason == "error"
    # The PE, not yet told, streams the request's KV: it must be dropped, not parked.
    kv = np.zeros((100, de.model_config.kv_bytes_per_token_per_layer), dtype=np.uint8)
    de._on_data(Message("pe", KvLayer(A("big"), 0, 0, 100), [kv], TrafficClass.KV, kv.nbytes))
    assert de._early.take(A("big")) == []
    assert de.cache.num_free_blocks == 2


def test_prefill_reader_that_reserves_after_the_abort_frees_the_buffer() -> None:
    """The abort releases the buffer; a reader thread that reserves just after (it checked
    `alive()` before the abort) must release it again itself."""
    pe: Any = object.__new__(PrefillEngine)
    pe.block_size = 64
    pe.buffer = BufferPool("pe0", 1 << 20)
    pe._cond = threading.Condition()
    task = PrefillTask(_assign_prefill("r", "pe"))

    def racing_read(rid: AttemptId, hashes: list[str], alive: Any) -> list[np.ndarray]:
        task.aborted = True  # the Abort lands (and releases) ...
        pe.buffer.release(rid)
        pe.buffer.reserve(rid, 4096)  # ... just before the reader's reservation
        return []

    pe.read_hit_blocks = racing_read
    pe._read_blocks(task)
    assert pe.buffer.stats().reserved_bytes == 0


def test_sender_remembers_a_bounded_number_of_dropped_requests() -> None:
    hub = LocalHub()
    sender = DataSender(LocalTransport(hub, "a"))
    try:
        for i in range(20_000):  # a long-running server aborts many requests
            sender.drop(A(f"r{i}"))
        assert len(sender._dropped) <= 4096
        assert A("r19999") in sender._dropped
    finally:
        sender.close()


def _failing_engine(engine: Any, timeout_s: float) -> list[Any]:
    """Wire what `report_transfer_failed` needs; returns the control messages sent."""
    from dualpath.core.config import ClusterConfig

    engine.engine_id = 5
    engine.config = ClusterConfig(model="tiny", store_path="unused", kv_wait_timeout_s=timeout_s)
    engine._local_aborts = queue.SimpleQueue()
    sent: list[Any] = []
    engine.send_control = sent.append
    return sent


def test_decode_engine_waiting_too_long_for_kv_reports_the_transfer_failed() -> None:
    de: Any = object.__new__(DecodeEngine)
    sent = _failing_engine(de, timeout_s=30.0)
    de._tasks = {}
    stuck = DecodeTask(_assign_decode("r", 100, 4), waiting_since_s=time.monotonic() - 31)
    fresh = DecodeTask(_assign_decode("s", 100, 4), waiting_since_s=time.monotonic())
    reading = DecodeTask(_assign_decode("t", 100, 4))  # its own DE-path read still runs
    de._tasks = {t.rid: t for t in (stuck, fresh, reading)}
    de._expire_kv_waits()
    de._expire_kv_waits()  # reported once, not on every step
    assert sent == [ctl.TransferFailed(5, A("r"), "pe", sent[0].error)]
    assert "no KV from the prefill engine" in sent[0].error
    assert de._local_aborts.get_nowait() == A("r") and de._local_aborts.empty()


def test_prefill_engine_waiting_too_long_for_the_hit_notice_reports_it() -> None:
    pe: Any = object.__new__(PrefillEngine)
    sent = _failing_engine(pe, timeout_s=30.0)
    pe._cond = threading.Condition()

    pe.block_size = 64

    def task(rid: str, path: str, age_s: float) -> PrefillTask:
        t = PrefillTask(_assign_prefill(rid, path))
        t.assigned_s = time.monotonic() - age_s
        return t

    stuck, fresh, own_read = task("r", "de", 31), task("s", "de", 1), task("t", "pe", 31)
    pe._tasks = {t.rid: t for t in (stuck, fresh, own_read)}
    pe._expire_hit_waits()
    assert [(m.attempt, m.peer_address) for m in sent] == [(A("r"), "de")]
    assert stuck.state == TaskState.FAILED and pe._local_aborts.get_nowait() == A("r")
    # A late notice must not revive the failed task.
    with pe._cond:
        pe._apply_data(stuck, Message("de", HitReady(A("r"), 64), [], TrafficClass.KV, 0))
    assert stuck.state == TaskState.FAILED
    pe._expire_hit_waits()
    assert len(sent) == 1
