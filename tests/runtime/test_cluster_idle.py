"""A real local cluster goes back to idle after a mixed workload: one-token answers, answers
ending on a block edge, client disconnects and aborts mid-stream, and a decode engine killed
while it reads a request's prefix (DE read path). Afterwards the scheduler's books (seq_e,
tok_e, KV, read queues) and the engines' own (tasks, buffers, parked messages, KV blocks)
must all be back to zero."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import assert_idle, kv_capacity, run_request

from dualpath.core.config import ClusterConfig
from dualpath.core.requests import GenerateRequest, SamplingParams, TokenEvent
from dualpath.runtime.cluster import LocalCluster

pytestmark = pytest.mark.timeout(180)


async def _stream_then_leave(cluster: LocalCluster, rid: str, prompt: list[int],
                             how: str) -> int:
    """Read two tokens, then close the stream (`how="disconnect"`) or abort the request."""
    params = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
    stream = cluster.generate(GenerateRequest(rid, tuple(prompt), params))
    got = 0
    async for event in stream:
        if isinstance(event, TokenEvent):
            got += len(event.token_ids)
        if got >= 2:
            if how == "abort":
                await cluster.abort(rid)
                continue  # drain: the abort's FinishEvent ends the stream
            break
    await stream.aclose()
    return got


def _config(tmp_path: Path, **shape: object) -> ClusterConfig:
    """Small buffers and KV, and slow storage (a 64-token block of the tiny model is 48 KiB),
    so an engine is still reading the victim's prefix when it is killed."""
    return ClusterConfig(
        model="tiny", store_path=str(tmp_path / "store"), decode_kv_bytes=32 << 20,
        pe_buffer_bytes=32 << 20, de_buffer_bytes=32 << 20, engine_start_timeout_s=120,
        snic_bytes_s=100e3, **shape,  # type: ignore[arg-type]
    )


async def _start_victim(cluster: LocalCluster, side: str) -> tuple[asyncio.Task[Any], int, list[int]]:
    """Store a 128-token prefix, then start a request that reads it; returns (its task, the
    engine reading it — `side` "pe" or "de" — and its prompt) once that engine has it."""
    warm_prompt = [(11 * i + 5) % 256 for i in range(150)]
    warm = await run_request(cluster, "warm", warm_prompt)
    await asyncio.sleep(2.0)  # the DE persists blocks 0 and 1 through the slow SNIC
    victim_prompt = warm_prompt + warm.tokens + [(7 * i) % 256 for i in range(40)]
    victim = asyncio.create_task(run_request(cluster, "victim", victim_prompt))
    while (rec := cluster.books.record("victim")) is None or rec.attempt is None:
        await asyncio.sleep(0.005)
    assert rec.cached_tokens == 128 and rec.attempt.placement.read.side == side
    reader = rec.attempt.pe if side == "pe" else rec.attempt.de
    return victim, reader, victim_prompt


def test_cluster_is_idle_after_aborts_one_token_answers_and_a_killed_engine(
        tmp_path: Path) -> None:
    async def main() -> None:
        cluster = LocalCluster(_config(tmp_path, prefill_nodes=1, decode_nodes=2, read_path="de"))
        await cluster.start()
        try:
            capacity = kv_capacity(cluster)
            victim, killed, _ = await _start_victim(cluster, "de")
            cluster.kill_engine(killed)
            others = await asyncio.wait_for(asyncio.gather(
                run_request(cluster, "one", [(3 * i) % 256 for i in range(70)], max_tokens=1),
                run_request(cluster, "edge", [(5 * i) % 256 for i in range(120)], max_tokens=8),
                _stream_then_leave(cluster, "gone", [(9 * i) % 256 for i in range(90)],
                                   "disconnect"),
                _stream_then_leave(cluster, "aborted", [(13 * i) % 256 for i in range(80)],
                                   "abort"),
            ), 60)
            result = await asyncio.wait_for(victim, 30)  # hung here: retry on the same PE
            assert result.finish.finish_reason == "length" and len(result.tokens) == 8
            assert others[0].finish.finish_reason == "length" and len(others[0].tokens) == 1
            assert len(others[1].tokens) == 8
            assert others[2] >= 2 and others[3] >= 2
            # The death was seen: the engine is still down, or was restarted and rejoined.
            assert (not cluster.books.ledger.alive(killed)
                    or cluster.metrics.engine_restarts >= 1)
            await assert_idle(cluster, capacity)
        finally:
            await cluster.shutdown()

    asyncio.run(main())


def test_cluster_is_idle_after_a_prefill_engine_is_killed_mid_read(tmp_path: Path) -> None:
    """PE read path, two PEs: the victim's PE dies while reading its prefix; the request is
    re-run on the other PE, gives the same answer, and nothing is left behind."""

    async def main() -> None:
        cluster = LocalCluster(_config(tmp_path, prefill_nodes=2, decode_nodes=1, read_path="pe"))
        await cluster.start()
        try:
            capacity = kv_capacity(cluster)
            victim, killed, victim_prompt = await _start_victim(cluster, "pe")
            cluster.kill_engine(killed)
            result = await asyncio.wait_for(victim, 30)
            assert (not cluster.books.ledger.alive(killed)  # still down, or restarted
                    or cluster.metrics.engine_restarts >= 1)
            again = await run_request(cluster, "again", victim_prompt)
            assert result.tokens == again.tokens and len(result.tokens) == 8
            await assert_idle(cluster, capacity)
        finally:
            await cluster.shutdown()

    asyncio.run(main())
