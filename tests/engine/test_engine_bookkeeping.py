"""Engine-side books on the rare exit paths, on engines built without processes or models:
only the state the tested method touches is set up."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np

from dualpath.core.model_config import ModelConfig
from dualpath.engine.decode import DecodeEngine, DecodeTask
from dualpath.engine.kv_messages import DataSender, EarlyMessages
from dualpath.engine.prefill import PrefillEngine, PrefillTask
from dualpath.model.kv_cache import PagedKVCache
from dualpath.runtime import protocol as proto
from dualpath.transfer.base import Message
from dualpath.transfer.buffer_pool import BufferPool
from dualpath.transfer.local_transport import LocalHub, LocalTransport
from dualpath.transfer.nic import TrafficClass


def _tiny_config() -> ModelConfig:
    from dualpath.model.loader import load_model

    model, _ = load_model("tiny", seed=0)
    return model.config


def _assign_decode(rid: str, prompt_len: int, max_tokens: int) -> proto.AssignDecode:
    return proto.AssignDecode(
        request_id=rid, prompt_token_ids=list(range(prompt_len)), hit_hashes=[], read_path="pe",
        prefill_engine=0, prefill_address="pe", max_tokens=max_tokens, min_tokens=0,
        temperature=0.0, top_p=1.0, seed=None, ignore_eos=True, stop_token_ids=[])


def test_decode_engine_refusing_a_request_does_not_park_its_kv_forever() -> None:
    de: Any = object.__new__(DecodeEngine)
    de.engine_id, de.block_size = 1, 64
    de.model_config = _tiny_config()
    de.cache = PagedKVCache(de.model_config, num_blocks=2, block_size=64)
    de._tasks, de._events, de._early = {}, queue.Queue(), EarlyMessages()
    sent: list[Any] = []
    de.send_control = sent.append
    de._assign(_assign_decode("big#1", 100, 100))  # needs 4 blocks, 2 exist
    assert isinstance(sent[0], proto.Finished) and sent[0].finish_reason == "error"
    # The PE, not yet told, streams the request's KV: it must be dropped, not parked.
    kv = np.zeros((100, de.model_config.kv_bytes_per_token_per_layer), dtype=np.uint8)
    de._on_data(Message("pe", {"kind": "kv_layer", "rid": "big#1", "layer": 0, "start": 0,
                               "n": 100}, [kv], TrafficClass.KV, kv.nbytes))
    assert de._early.take("big#1") == []
    assert de.cache.num_free_blocks == 2


def test_prefill_reader_that_reserves_after_the_abort_frees_the_buffer() -> None:
    """The abort releases the buffer; a reader thread that reserves just after (it checked
    `alive()` before the abort) must release it again itself."""
    pe: Any = object.__new__(PrefillEngine)
    pe.block_size = 64
    pe.buffer = BufferPool("pe0", 1 << 20)
    pe._cond = threading.Condition()
    task = PrefillTask(proto.AssignPrefill(
        request_id="r#1", prompt_token_ids=list(range(200)), hit_hashes=["h0", "h1"],
        read_path="pe", decode_engine=1, decode_address="de", layerwise=True,
        temperature=0.0, top_p=1.0, seed=None, banned_first_token_ids=[]))

    def racing_read(rid: str, hashes: list[str], alive: Any) -> list[np.ndarray]:
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
            sender.drop(f"r{i}")
        assert len(sender._dropped) <= 4096
        assert "r19999" in sender._dropped
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
    stuck = DecodeTask(_assign_decode("r#1", 100, 4), waiting_since_s=time.monotonic() - 31)
    fresh = DecodeTask(_assign_decode("s#1", 100, 4), waiting_since_s=time.monotonic())
    reading = DecodeTask(_assign_decode("t#1", 100, 4))  # its own DE-path read still runs
    de._tasks = {t.rid: t for t in (stuck, fresh, reading)}
    de._expire_kv_waits()
    de._expire_kv_waits()  # reported once, not on every step
    assert sent == [proto.TransferFailed(5, "r#1", "pe", sent[0].error)]
    assert "no KV from the prefill engine" in sent[0].error
    assert de._local_aborts.get_nowait() == "r#1" and de._local_aborts.empty()


def test_prefill_engine_waiting_too_long_for_the_hit_notice_reports_it() -> None:
    pe: Any = object.__new__(PrefillEngine)
    sent = _failing_engine(pe, timeout_s=30.0)
    pe._cond = threading.Condition()

    def task(rid: str, path: str, age_s: float) -> PrefillTask:
        t = PrefillTask(proto.AssignPrefill(
            request_id=rid, prompt_token_ids=list(range(200)), hit_hashes=["h0"],
            read_path=path, decode_engine=1, decode_address="de", layerwise=True,
            temperature=0.0, top_p=1.0, seed=None, banned_first_token_ids=[]))
        t.assigned_s = time.monotonic() - age_s
        return t

    stuck, fresh, own_read = task("r#1", "de", 31), task("s#1", "de", 1), task("t#1", "pe", 31)
    pe._tasks = {t.rid: t for t in (stuck, fresh, own_read)}
    pe._expire_hit_waits()
    assert [(m.request_id, m.peer_address) for m in sent] == [("r#1", "de")]
    assert stuck.state == "failed" and pe._local_aborts.get_nowait() == "r#1"
    # A late notice must not revive the failed task.
    with pe._cond:
        pe._apply_data(stuck, Message("de", {"kind": "hit_ready", "rid": "r#1",
                                             "hit_tokens": 64}, [], TrafficClass.KV, 0))
    assert stuck.state == "failed"
    pe._expire_hit_waits()
    assert len(sent) == 1
