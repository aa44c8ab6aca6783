"""Overload against a real server process: `--max-queue 8 --max-running 8` and 200 concurrent
clients. The excess gets 429 with Retry-After at once, the admitted ones complete, nothing
hangs, and the server's RSS comes back within 10% of its baseline."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest
from process_harness import ServerProcess

CONCURRENCY = 200
LIMIT = 8  # --max-queue and --max-running


async def _one(session: aiohttp.ClientSession, url: str, prompt: str) -> tuple[int, str | None]:
    async with session.post(url, json={"prompt": prompt, "max_tokens": 20}) as resp:
        await resp.read()
        return resp.status, resp.headers.get("Retry-After")


async def _burst(port: int, n: int, prompt: str) -> list[tuple[int, str | None]]:
    url = f"http://127.0.0.1:{port}/v1/completions"
    # One connection per client, as 200 independent agents would have.
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        return await asyncio.gather(*[_one(session, url, prompt) for _ in range(n)])


def _settled_rss(srv: ServerProcess) -> int:
    """RSS once the server has been idle for a while (it trims its heap after ~2 s idle):
    the smallest of the samples of the last second of 4 s."""
    samples = []
    for _ in range(16):
        time.sleep(0.25)
        samples.append(srv.rss_bytes())
    return min(samples[-4:])


def _check_burst(results: list[tuple[int, str | None]]) -> Counter[int]:
    statuses = Counter(status for status, _ in results)
    assert set(statuses) <= {200, 429}, statuses
    # At least the running and the waiting slots were used; the rest was refused.
    assert statuses[200] >= 2 * LIMIT and statuses[429] >= CONCURRENCY - 4 * LIMIT, statuses
    assert all(int(ra) >= 1 for status, ra in results if status == 429 and ra is not None)
    assert all(ra is not None for status, ra in results if status == 429)
    return statuses


def _run(rounds: int, prompt_chars: int, *extra: str) -> tuple[int, int, int]:
    with ServerProcess("--max-queue", str(LIMIT), "--max-running", str(LIMIT),
                       "--token-delay-s", "0.02", *extra) as srv:
        prompt = "p" * prompt_chars
        for _ in range(20):  # warm-up: code paths and allocator pools touched once
            assert srv.normal_request_succeeds()
        asyncio.run(_burst(srv.port, 2 * LIMIT, prompt))
        baseline = _settled_rss(srv)
        peak = baseline
        for _ in range(rounds):
            results = asyncio.run(_burst(srv.port, CONCURRENCY, prompt))
            _check_burst(results)
            peak = max(peak, srv.rss_bytes())
        after = _settled_rss(srv)
        status, _, raw = srv.request("GET", "/metrics")
        assert status == 200 and b"dualpath_admission_in_flight 0.0" in raw
        assert srv.normal_request_succeeds()
        return baseline, peak, after


def test_overload_gives_429_and_memory_returns_to_baseline() -> None:
    # 50k-token prompts: each admitted request holds the echo engine's 3.2 MB stand-in for
    # its KV buffer, and its body, text and token list are large allocations too.
    baseline, peak, after = _run(2, 50_000, "--max-model-len", "60000")
    print(f"RSS baseline {baseline / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, "
          f"after {after / 2**20:.1f} MiB")
    assert after <= 1.10 * baseline, (baseline, after)


@pytest.mark.slow
def test_repeated_overload_with_large_prompts_keeps_memory_bounded() -> None:
    # 200k-token prompts: each admitted request also holds the echo engine's 12.8 MB stand-in
    # for its KV buffer, so the peak is far above the baseline.
    baseline, peak, after = _run(10, 200_000, "--max-model-len", "250000")
    print(f"RSS baseline {baseline / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, "
          f"after {after / 2**20:.1f} MiB")
    assert after <= 1.10 * baseline, (baseline, peak, after)
