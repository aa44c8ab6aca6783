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
