"""A real local cluster (scheduler process + 3 engine processes): outputs do not depend on
where the prefix KV comes from, bytes move on the chosen path, engines can die."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from cluster_helpers import assert_idle, kv_capacity, run_conversation, run_request

from dualpath.core.config import ClusterConfig
from dualpath.runtime.cluster import LocalCluster

pytestmark = pytest.mark.timeout(180)


def _config(tmp_path: Path, **kw: object) -> ClusterConfig:
    base: dict[str, object] = dict(
        model="tiny", store_path=str(tmp_path / "store"), decode_kv_bytes=32 << 20,
        pe_buffer_bytes=32 << 20, de_buffer_bytes=32 << 20, engine_start_timeout_s=120,
    )
    base.update(kw)
    return ClusterConfig(**base)  # type: ignore[arg-type]


async def _conversation(config: ClusterConfig) -> tuple[list, dict]:
    cluster = LocalCluster(config)
    await cluster.start()
    try:
        results = await run_conversation(cluster, config.read_path)
        await asyncio.sleep(0.7)  # one more stats report from every engine
        counters = cluster.counters()
    finally:
        await cluster.shutdown()
    return results, counters


def _path_bytes(counters: dict, key: str) -> float:
    return sum(c.get(key, 0.0) for c in counters.values())


def test_outputs_identical_across_read_paths(tmp_path: Path) -> None:
    async def main() -> None:
        cold, cold_counters = await _conversation(_config(tmp_path / "cold", use_kv_store=False))
        pe, pe_counters = await _conversation(_config(tmp_path / "pe", read_path="pe"))
        de, de_counters = await _conversation(_config(tmp_path / "de", read_path="de"))
        assert [r.tokens for r in pe] == [r.tokens for r in cold]
        assert [r.tokens for r in de] == [r.tokens for r in cold]
        # The answers are text-like (tests/model/test_preset_variety.py), so the equality
        # above would catch wrong KV on either path.
        assert len({t for r in cold for t in r.tokens}) >= 8
        # Turn 1 is cold everywhere; later turns load their prefix from the store.
        assert all(r.finish.cached_tokens == 0 for r in cold)
        for results in (pe, de):
            assert results[0].finish.cached_tokens == 0
            assert all(r.finish.cached_tokens >= 128 for r in results[1:])
        # The bytes moved on the forced path only.
        assert _path_bytes(pe_counters, "bytes_read_pe_path") > 0
        assert _path_bytes(pe_counters, "bytes_read_de_path") == 0
        assert _path_bytes(de_counters, "bytes_read_de_path") > 0
        assert _path_bytes(de_counters, "bytes_read_pe_path") == 0
        # The decode engines count their steps (`runtime_profile` fits its decode model on
        # them): every answer token after the prefill's first is one sequence of one step.
        batch = _path_bytes(cold_counters, "decode.batch_sum")
        answers = sum(len(r.tokens) for r in cold)
        assert answers - len(cold) <= batch <= answers
        assert 0 < _path_bytes(cold_counters, "decode.steps") <= batch
        assert _path_bytes(cold_counters, "decode.ctx_sum") > batch * 64
        assert _path_bytes(cold_counters, "decode.cpu_s") > 0

    asyncio.run(main())


def test_non_layerwise_and_chunked_prefill_match(tmp_path: Path) -> None:
    """`basic` (prefix loaded whole) with a tiny compute quota (forces chunked prefill)."""

    async def main() -> None:
        cold, _ = await _conversation(_config(tmp_path / "cold", use_kv_store=False))
        basic, counters = await _conversation(_config(tmp_path / "basic", system="basic",
                                                      prefill_quota_s=1e-6))
        assert [r.tokens for r in basic] == [r.tokens for r in cold]
        assert basic[2].finish.cached_tokens >= 192
        assert _path_bytes(counters, "bytes_read_de_path") == 0

    asyncio.run(main())


def test_killing_a_decode_engine_mid_run(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = LocalCluster(_config(tmp_path, decode_nodes=2))
        await cluster.start()
        try:
            capacity = kv_capacity(cluster)
            prompts = [[(i * 13 + k) % 256 for k in range(100 + i)] for i in range(8)]
            tasks = [asyncio.create_task(run_request(cluster, f"r{i}", p, max_tokens=300))
                     for i, p in enumerate(prompts)]
            victim = None
            while victim is None:  # kill a decode engine while it is decoding
                await asyncio.sleep(0.01)
                busy = [r.attempt.de for r in cluster.books.live()
                        if r.attempt is not None and len(r.generated) > 5]
                victim = busy[0] if busy else None
            cluster.kill_engine(victim)
            results = await asyncio.gather(*tasks)
            # The death was seen: the engine is still down, or was restarted (0.5 s backoff)
            # and rejoined before the re-run requests finished.
            assert (not cluster.books.ledger.alive(victim)
                    or cluster.metrics.engine_restarts >= 1)
            for r in results:
                assert r.finish.finish_reason == "length", r.finish
                assert len(r.tokens) == 300
            # Still serving afterwards, on the surviving engines, with the same (greedy) output.
            again = await run_request(cluster, "after", prompts[0], max_tokens=300)
            assert again.tokens == results[0].tokens
            await assert_idle(cluster, capacity)
        finally:
            await cluster.shutdown()

    asyncio.run(main())


def test_shutdown_leaves_no_process(tmp_path: Path) -> None:
    async def main() -> list[int]:
        cluster = LocalCluster(_config(tmp_path))
        await cluster.start()
        pids = [e.pid for e in cluster.books.ledger.engines.values()]
        await run_request(cluster, "one", list(range(50)))
        await cluster.shutdown()
        return pids

    for pid in asyncio.run(main()):
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smollm2_outputs_identical_across_read_paths(tmp_path: Path) -> None:
    """The real model: a 3-turn conversation, cold vs PE path vs DE path."""

    async def main() -> None:
        runs = {}
        for name, extra in (("cold", {"use_kv_store": False}), ("pe", {"read_path": "pe"}),
                            ("de", {"read_path": "de"})):
            cfg = _config(tmp_path / name, model="smollm2", decode_kv_bytes=256 << 20,
                          pe_buffer_bytes=256 << 20, **extra)
            cluster = LocalCluster(cfg)
            await cluster.start()
            try:
                runs[name] = await run_conversation(cluster, name, vocab=49152)
            finally:
                await cluster.shutdown()
        assert [r.tokens for r in runs["pe"]] == [r.tokens for r in runs["cold"]]
        assert [r.tokens for r in runs["de"]] == [r.tokens for r in runs["cold"]]
        assert all(r.finish.cached_tokens >= 128 for r in runs["de"][1:])

    asyncio.run(main())


def test_corrupt_block_is_recomputed_not_served(tmp_path: Path) -> None:
    """A stored block that fails its checksum ends the loaded prefix; output is unchanged."""
    from dualpath.kv.hashing import block_hashes

    async def main() -> None:
        cold, _ = await _conversation(_config(tmp_path / "cold", use_kv_store=False))
        for read_path in ("pe", "de"):
            cfg = _config(tmp_path / read_path, read_path=read_path)
            cluster = LocalCluster(cfg)
            await cluster.start()
            try:
                prompt = [(11 * i + 5) % 256 for i in range(150)]
                first = await run_request(cluster, "t0", prompt)
                await asyncio.sleep(0.5)
                second_prompt = prompt + first.tokens + [(7 * i) % 256 for i in range(40)]
                hashes = block_hashes(second_prompt, 64, cluster.model_config.identity)
                path = Path(cluster.store.path_of(hashes[1]))  # type: ignore[union-attr]
                data = bytearray(path.read_bytes())
                data[-100] ^= 0xFF  # flip a payload byte: the layer checksum must catch it
                path.write_bytes(bytes(data))
                second = await run_request(cluster, "t1", second_prompt)
                await assert_idle(cluster, kv_capacity(cluster))
            finally:
                await cluster.shutdown()
            assert first.tokens == cold[0].tokens
            assert second.tokens == cold[1].tokens
            assert second.finish.cached_tokens == 64  # block 0 loaded, block 1 recomputed

    asyncio.run(main())


def test_runtime_dispatches_exactly_the_pure_schedulers_decisions(tmp_path: Path) -> None:
    """Replaying the runtime's recorded scheduler inputs through a fresh `GlobalScheduler`
    gives the placements the runtime dispatched (the simulator is held to the same test in
    tests/sim), so both run the very same decisions for the same inputs."""
    from dualpath.scheduler import GlobalScheduler

    async def main() -> None:
        cluster = LocalCluster(_config(tmp_path), record_scheduler_calls=True)
        await cluster.start()
        try:
            await run_conversation(cluster, "warm", turns=2)
            prompts = [[(i * 13 + k) % 256 for k in range(150 + 20 * i)] for i in range(6)]
            await asyncio.gather(*(run_request(cluster, f"r{i}", p)
                                   for i, p in enumerate(prompts)))
        finally:
            await cluster.shutdown()
        assert cluster._scheduler is not None
        fresh = GlobalScheduler(cluster._scheduler.config)
        sides = set()
        for infos, view, dispatched in cluster.scheduler_calls:
            replay = [(str(p.request_id), p.pe_engine, p.de_engine, p.read.side)
                      for p in fresh.schedule(infos, view).placements]
            assert replay == dispatched
            sides.update(d[3] for d in dispatched)
        assert len(cluster.scheduler_calls) >= 3
        assert sides  # decisions were recorded

    asyncio.run(main())
