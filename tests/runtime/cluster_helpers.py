"""Helpers for tests that start a real local cluster (engine processes on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from dualpath.core.requests import FinishEvent, GenerateRequest, SamplingParams, TokenEvent
from dualpath.runtime.cluster import LocalCluster


@dataclass
class Result:
    tokens: list[int]
    finish: FinishEvent


async def run_request(cluster: LocalCluster, rid: str, prompt: Sequence[int],
                      max_tokens: int = 8, **sampling: object) -> Result:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                            **sampling)  # type: ignore[arg-type]
    tokens: list[int] = []
    finish = None
    async for event in cluster.generate(GenerateRequest(rid, tuple(prompt), params)):
        if isinstance(event, TokenEvent):
            tokens.extend(event.token_ids)
        else:
            finish = event
    assert finish is not None
    return Result(tokens, finish)


async def run_conversation(cluster: LocalCluster, tag: str, turns: int = 3,
                           first_len: int = 150, append_len: int = 40,
                           vocab: int = 256) -> list[Result]:
    """A multi-turn chat: each prompt = previous prompt + answer + a new append."""
    prompt = [(11 * i + 5) % vocab for i in range(first_len)]
    results = []
    for turn in range(turns):
        result = await run_request(cluster, f"{tag}-{turn}", prompt)
        results.append(result)
        prompt = prompt + result.tokens + [(7 * i + turn) % vocab for i in range(append_len)]
        await asyncio.sleep(0.3)  # let the DE persist the turn's blocks
    return results


async def assert_idle(cluster: LocalCluster, capacity: dict[int, int]) -> None:
    """Everything is back to zero: the scheduler's books and, from a fresh stats report of
    every live engine, its tasks, buffer, parked messages and KV blocks (`capacity`: each
    engine's free KV tokens at start-up)."""
    await asyncio.sleep(1.2)  # stats go out every 0.5 s
    ledger = cluster.books.ledger
    assert ledger.idle(), ledger.engines
    assert cluster.books.num_live == 0
    cluster.books.check_integrity()
    for engine_id, c in cluster.counters().items():
        if not ledger.alive(engine_id):
            continue
        assert c["buffer.used_bytes"] == 0, (engine_id, c)
        assert (c["load.seq"], c["load.tok"], c["early.parked"]) == (0, 0, 0), (engine_id, c)
        if "kv_free_tokens" in c:
            assert c["kv_free_tokens"] == capacity[engine_id], (engine_id, c)


def kv_capacity(cluster: LocalCluster) -> dict[int, int]:
    return {e.engine_id: e.kv_capacity_tokens for e in cluster.books.ledger.engines.values()}
