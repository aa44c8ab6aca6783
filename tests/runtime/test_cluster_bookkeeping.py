"""The scheduler process's bookkeeping on every exit path, without engine processes.

A `LocalCluster` that was never started gets three fake engines (Hello messages), its sends
are recorded instead of going out, and engine replies are fed to `_on_message` by hand — so
each path (finish, client disconnect, abort, engine death and retry, stale messages of an
earlier attempt, shutdown) is exercised deterministically and the cluster must end idle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dualpath.core.config import ClusterConfig
from dualpath.core.requests import FinishEvent, GenerateEvent, GenerateRequest, SamplingParams
from dualpath.runtime import protocol as proto
from dualpath.runtime.cluster import LocalCluster
from dualpath.scheduler import GlobalScheduler

PE, DE1, DE2, PE2 = 0, 1, 2, 3
KV_CAPACITY_TOKENS = 64 * 64


def _cluster(tmp_path: Path, second_pe: bool = False) -> tuple[LocalCluster,
                                                               list[tuple[int, Any]]]:
    config = ClusterConfig(model="tiny", store_path=str(tmp_path / "store"))
    cluster = LocalCluster(config)
    roles = [(PE, "prefill"), (DE1, "decode"), (DE2, "decode")]
    for engine_id, role in roles + ([(PE2, "prefill")] if second_pe else []):
        cluster.state.add_engine(proto.Hello(
            engine_id=engine_id, node_id=engine_id, role=role, data_address=f"addr{engine_id}",
            kv_capacity_tokens=KV_CAPACITY_TOKENS if role == "decode" else 0, pid=0,
            prefill_tokens_per_s=1000.0 if role == "prefill" else 0.0))
    cluster._scheduler = GlobalScheduler(cluster._scheduler_config())
    sent: list[tuple[int, Any]] = []
    cluster._send = lambda engine_id, msg: sent.append((engine_id, msg))  # type: ignore[method-assign]
    # Every prompt "hits" one stored block, so the read queues are exercised too.
    cluster._lookup = lambda prompt: (["h0"], 64)  # type: ignore[method-assign]
    return cluster, sent


def _request(rid: str, max_tokens: int = 4, prompt_len: int = 100) -> GenerateRequest:
    return GenerateRequest(rid, tuple(range(prompt_len)),
                           SamplingParams(max_tokens=max_tokens, ignore_eos=True))


async def _schedule(cluster: LocalCluster) -> None:
    """One pass of the real scheduling loop."""
    task = asyncio.create_task(cluster._schedule_loop())
    cluster._wake.set()
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()


def _assigned(sent: list[tuple[int, Any]], rid: str) -> proto.AssignPrefill:
    """The latest AssignPrefill sent for request `rid` (any attempt)."""
    msgs = [m for _, m in sent if isinstance(m, proto.AssignPrefill)
            and m.request_id.split("#")[0] == rid]
    return msgs[-1]


def _assert_idle(cluster: LocalCluster) -> None:
    for e in cluster.state.engines.values():
        assert (e.seq, e.tok, e.kv_used_tokens) == (0, 0, 0), e
    assert all(q == 0 for q in cluster.state.read_queue.values()), cluster.state.read_queue
    assert cluster._requests == {}
    assert cluster._waiting == []


async def _start(cluster: LocalCluster, req: GenerateRequest) -> tuple[AsyncIterator[GenerateEvent],
                                                                        asyncio.Task[Any]]:
    stream = cluster.generate(req)
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0)
    return stream, first


def test_client_disconnect_mid_stream_leaves_nothing_behind(tmp_path: Path) -> None:
    async def main() -> None:
        cluster, sent = _cluster(tmp_path)
        stream, first = await _start(cluster, _request("r"))
        await _schedule(cluster)
        a = _assigned(sent, "r")
        cluster._on_message(proto.PrefillDone(PE, a.request_id, 64))
        cluster._on_message(proto.ReadDone(PE, a.request_id, 64, 64))
        cluster._on_message(proto.Tokens(a.decode_engine, a.request_id, [7]))
        assert (await first).token_ids == (7,)
        await stream.aclose()  # type: ignore[attr-defined]
        assert (a.decode_engine, proto.Abort(a.request_id)) in sent
        _assert_idle(cluster)
        assert cluster.metrics_snapshot().num_running == 0

    asyncio.run(main())


def test_engine_death_requeues_in_arrival_order_and_ignores_stale_attempts(
        tmp_path: Path) -> None:
    async def main() -> None:
        cluster, sent = _cluster(tmp_path)
        streams = [await _start(cluster, _request(f"r{i}", prompt_len=100 + i))
                   for i in range(3)]
        await _schedule(cluster)
        first = {f"r{i}": _assigned(sent, f"r{i}") for i in range(3)}
        by_de = {de: [rid for rid, a in first.items() if a.decode_engine == de]
                 for de in (DE1, DE2)}
        victim = max(by_de, key=lambda de: len(by_de[de]))
        on_victim = by_de[victim]
        assert len(on_victim) >= 2
        cluster._engine_died(victim)
        # Re-queued ahead of everything, in the order they arrived (not reversed).
        assert [r.rid for r in cluster._waiting] == on_victim
        for rid in on_victim:  # the PE was told to drop the dead attempt
            assert (PE, proto.Abort(first[rid].request_id)) in sent
        await _schedule(cluster)
        second = {rid: _assigned(sent, rid) for rid in on_victim}
        rid = on_victim[0]
        assert second[rid].request_id != first[rid].request_id  # a fresh id per attempt
        tok = cluster.state.engines[PE].tok
        # The PE (alive, same engine) reports the aborted attempt after the retry started:
        # those reports must not touch the new attempt's accounting or stream.
        old = first[rid].request_id
        cluster._on_message(proto.ReadDone(PE, old, 64, 0))
        cluster._on_message(proto.PrefillDone(PE, old, 0))
        assert cluster.state.engines[PE].tok == tok
        assert sum(cluster.state.read_queue.values()) == 64 * 3
        # Finish everything properly.
        for i in range(3):
            a = _assigned(sent, f"r{i}")
            cluster._on_message(proto.ReadDone(PE, a.request_id, 64, 64))
            cluster._on_message(proto.PrefillDone(PE, a.request_id, 64))
            cluster._on_message(proto.Tokens(a.decode_engine, a.request_id, [1, 2, 3, 4]))
            cluster._on_message(proto.Finished(a.decode_engine, a.request_id, "length",
                                               100 + i, 4, 64))
        for stream, first_event in streams:
            events = [await first_event]
            async for event in stream:
                events.append(event)
            assert isinstance(events[-1], FinishEvent) and events[-1].finish_reason == "length"
            assert sum(len(e.token_ids) for e in events[:-1]) == 4
        _assert_idle(cluster)

    asyncio.run(main())


def test_decode_engine_giving_up_during_prefill_aborts_the_prefill(tmp_path: Path) -> None:
    """E.g. the DE refuses the request (out of KV): the PE must drop it too, or on the DE
    read path it waits forever for hit KV that never comes."""

    async def main() -> None:
        cluster, sent = _cluster(tmp_path)
        _stream, first = await _start(cluster, _request("r"))
        await _schedule(cluster)
        a = _assigned(sent, "r")
        cluster._on_message(proto.Finished(a.decode_engine, a.request_id, "error", 100, 0, 0,
                                           error="decode engine out of KV memory"))
        assert (PE, proto.Abort(a.request_id)) in sent
        event = await first
        assert isinstance(event, FinishEvent) and event.finish_reason == "error"
        cluster._on_message(proto.ReadDone(PE, a.request_id, 64, 0))  # late; ignored
        _assert_idle(cluster)

    asyncio.run(main())


def test_request_no_decode_engine_can_hold_is_refused_not_queued_forever(
        tmp_path: Path) -> None:
    """The scheduler waits for KV room; a request larger than any DE would block its group's
    queue for good, so it is refused at once and later requests still run."""

    async def main() -> None:
        cluster, sent = _cluster(tmp_path)
        async def collect() -> list[GenerateEvent]:
            return [e async for e in cluster.generate(_request("big", KV_CAPACITY_TOKENS))]

        async def collect_one(rid: str) -> list[GenerateEvent]:
            return [e async for e in cluster.generate(_request(rid))]

        # The server sees the cap first and answers 400 (context_length_exceeded).
        bs = cluster.config.block_size
        assert cluster.max_model_len == min(cluster.model_config.max_position_embeddings,
                                            KV_CAPACITY_TOKENS // bs * bs)
        events = await asyncio.wait_for(collect(), 5.0)
        assert len(events) == 1
        assert isinstance(events[0], FinishEvent) and events[0].finish_reason == "error"
        _, first = await _start(cluster, _request("small"))
        await _schedule(cluster)
        assert _assigned(sent, "small").request_id
        first.cancel()
        # Once no prefill engine is left, a new request is refused too (it used to wait
        # in the queue forever: the engine-death handler only fails requests it knows).
        cluster._engine_died(PE)
        events = await asyncio.wait_for(collect_one("late"), 5.0)
        assert isinstance(events[-1], FinishEvent) and events[-1].finish_reason == "error"
        _assert_idle(cluster)

    asyncio.run(main())


def test_shutdown_returns_in_flight_accounting(tmp_path: Path) -> None:
    async def main() -> None:
        cluster, _ = _cluster(tmp_path)
        started = [await _start(cluster, _request(f"r{i}")) for i in range(2)]
        await _schedule(cluster)
        await _start(cluster, _request("queued"))
        await cluster.shutdown()
        for _, first in started:
            event = await first
            assert isinstance(event, FinishEvent) and event.finish_reason == "abort"
        _assert_idle(cluster)

    asyncio.run(main())


def test_prefill_engine_dying_before_its_kv_reached_the_decode_engine(tmp_path: Path) -> None:
    """PrefillDone leaves the PE as soon as its KV is queued: if the PE dies before the DE has
    it (no token streamed yet), the request is re-run, not left waiting on the DE forever."""

    async def main() -> None:
        cluster, sent = _cluster(tmp_path, second_pe=True)
        stream, first = await _start(cluster, _request("r"))
        await _schedule(cluster)
        a = _assigned(sent, "r")
        cluster._on_message(proto.ReadDone(a.decode_engine, a.request_id, 64, 64))
        dead = next(e for e, m in sent if m is a)  # the PE it went to
        cluster._on_message(proto.PrefillDone(dead, a.request_id, 64))
        cluster._engine_died(dead)
        assert (a.decode_engine, proto.Abort(a.request_id)) in sent
        await _schedule(cluster)
        b = _assigned(sent, "r")
        assert b.request_id != a.request_id and b is not a
        assert next(e for e, m in sent if m is b) != dead
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await stream.aclose()  # type: ignore[attr-defined]
        _assert_idle(cluster)

    asyncio.run(main())


def test_room_freed_by_a_disconnect_lets_waiting_requests_go(tmp_path: Path) -> None:
    """Each DE holds one of these requests; the third waits for room. When a client goes
    away its room must reach the waiting request without any other event."""

    async def main() -> None:
        cluster, sent = _cluster(tmp_path)
        loop = asyncio.create_task(cluster._schedule_loop())
        try:
            started = [await _start(cluster, _request(f"r{i}", max_tokens=3000))
                       for i in range(3)]
            for _ in range(5):
                await asyncio.sleep(0)
            assert [r.rid for r in cluster._waiting] == ["r2"]
            stream, first = started[0]
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
            await stream.aclose()  # type: ignore[attr-defined]
            for _ in range(5):
                await asyncio.sleep(0)
            assert cluster._waiting == []
            assert _assigned(sent, "r2").decode_engine == _assigned(sent, "r0").decode_engine
        finally:
            loop.cancel()

    asyncio.run(main())


def test_metrics_forget_a_dead_engines_buffer_and_nic_load(tmp_path: Path) -> None:
    cluster, _ = _cluster(tmp_path)
    busy = {"buffer.used_bytes": 4096.0, "cnic.tx.kv.busy_s": 0.0}
    for engine_id in (DE1, DE2):
        cluster.state.record_counters(engine_id, busy)
        cluster.state.record_counters(engine_id, {**busy, "cnic.tx.kv.busy_s": 10.0})
        cluster._counters[engine_id] = busy
    cluster.state.mark_dead(DE1)
    m = cluster.metrics_snapshot()
    assert m.buffer_bytes_in_use == {"node1": 0, "node2": 4096}
    assert [label for label, _ in m.nic_utilization] == ["de2.2/cnic.tx"]


def test_decode_engine_dying_after_the_stop_token_ends_the_request(tmp_path: Path) -> None:
    """The DE streamed EOS and died before its Finished: the answer is complete; re-running
    it would generate past the stop token."""

    async def main() -> None:
        cluster, sent = _cluster(tmp_path)
        eos = cluster.tokenizer.eos_token_ids[0]
        stream = cluster.generate(GenerateRequest("r", tuple(range(100)),
                                                  SamplingParams(max_tokens=10)))
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)
        await _schedule(cluster)
        a = _assigned(sent, "r")
        cluster._on_message(proto.ReadDone(a.decode_engine, a.request_id, 64, 64))
        cluster._on_message(proto.PrefillDone(PE, a.request_id, 64))
        cluster._on_message(proto.Tokens(a.decode_engine, a.request_id, [5, eos]))
        cluster._engine_died(a.decode_engine)

        async def collect() -> list[GenerateEvent]:
            return [await first] + [e async for e in stream]

        events = await asyncio.wait_for(collect(), 5.0)  # not re-queued
        assert isinstance(events[-1], FinishEvent) and events[-1].finish_reason == "stop"
        assert events[-1].completion_tokens == 2
        _assert_idle(cluster)

    asyncio.run(main())


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_transfer_failure_reruns_the_request_on_a_new_attempt(tmp_path: Path) -> None:
    """A live PE could not send its KV: both engines drop the attempt, the request is re-run
    under a new id, a second report about the same dead attempt changes nothing, and the
    books end idle."""

    async def main() -> None:
        cluster, sent = _cluster(tmp_path)
        cluster.transfer_retry_delay_s = 0.0
        stream, first = await _start(cluster, _request("r"))
        await _schedule(cluster)
        a = _assigned(sent, "r")
        pe = next(e for e, m in sent if m is a)
        cluster._on_message(proto.ReadDone(pe, a.request_id, 64, 64))
        cluster._on_message(proto.TransferFailed(pe, a.request_id, "addr1", "send timed out"))
        assert (pe, proto.Abort(a.request_id)) in sent
        assert (a.decode_engine, proto.Abort(a.request_id)) in sent
        # The DE also notices (its KV never comes): the same attempt, already dropped.
        cluster._on_message(proto.TransferFailed(a.decode_engine, a.request_id, "addr0", "x"))
        await _settle()
        assert [r.rid for r in cluster._waiting] == ["r"]
        assert cluster._requests["r"].transfer_failures == 1
        await _schedule(cluster)
        b = _assigned(sent, "r")
        assert b.request_id != a.request_id
        cluster._on_message(proto.ReadDone(pe, b.request_id, 64, 64))
        cluster._on_message(proto.PrefillDone(pe, b.request_id, 64))
        cluster._on_message(proto.Tokens(b.decode_engine, b.request_id, [1, 2, 3, 4]))
        cluster._on_message(proto.Finished(b.decode_engine, b.request_id, "length", 100, 4, 64))
        events = [await first] + [e async for e in stream]
        assert isinstance(events[-1], FinishEvent) and events[-1].finish_reason == "length"
        assert sum(len(e.token_ids) for e in events[:-1]) == 4
        _assert_idle(cluster)

    asyncio.run(main())


def test_request_whose_transfers_keep_failing_ends_with_an_error(tmp_path: Path) -> None:
    async def main() -> None:
        cluster, sent = _cluster(tmp_path)
        cluster.transfer_retry_delay_s = 0.0
        stream, first = await _start(cluster, _request("r"))
        ids = []
        for _ in range(3):
            await _schedule(cluster)
            a = _assigned(sent, "r")
            ids.append(a.request_id)
            cluster._on_message(proto.TransferFailed(a.decode_engine, a.request_id, "addr0",
                                                     "send timed out"))
            await _settle()
        assert len(set(ids)) == 3
        events = [await first] + [e async for e in stream]
        assert isinstance(events[-1], FinishEvent) and events[-1].finish_reason == "error"
        assert events[-1].error is not None and "addr0" in events[-1].error
        assert "send timed out" in events[-1].error
        _assert_idle(cluster)

    asyncio.run(main())


def test_transfer_report_about_an_attempt_already_rerun_is_ignored(tmp_path: Path) -> None:
    """The peer really died: the supervisor re-ran the request; the survivor's late report
    about the old attempt must neither count nor touch the new attempt."""

    async def main() -> None:
        cluster, sent = _cluster(tmp_path)
        stream, first = await _start(cluster, _request("r"))
        await _schedule(cluster)
        a = _assigned(sent, "r")
        cluster._engine_died(a.decode_engine)
        await _schedule(cluster)
        b = _assigned(sent, "r")
        books = [(e.seq, e.tok, e.kv_used_tokens) for e in cluster.state.engines.values()]
        n_sent = len(sent)
        cluster._on_message(proto.TransferFailed(PE, a.request_id, "addr1", "timed out"))
        await _settle()
        assert len(sent) == n_sent and cluster._waiting == []
        assert books == [(e.seq, e.tok, e.kv_used_tokens)
                         for e in cluster.state.engines.values()]
        assert cluster._requests["r"].transfer_failures == 0
        cluster._on_message(proto.Finished(b.decode_engine, b.request_id, "length", 100, 4, 64))
        events = [await first] + [e async for e in stream]
        assert isinstance(events[-1], FinishEvent) and events[-1].finish_reason == "length"
        _assert_idle(cluster)

    asyncio.run(main())
