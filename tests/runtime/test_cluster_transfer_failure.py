"""A real local cluster whose engines fail their first KV sends (injected into the engines'
data senders): the PE's first layer of KV to the DE (PE -> DE), and the DE's first layer of
hit KV to the PE (DE read path, DE -> PE). Each failure is reported, the request is re-run
and gives the same greedy answer as an undisturbed run, and nothing is left behind."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import assert_idle, kv_capacity, run_request

from dualpath.core.config import ClusterConfig
from dualpath.engine.base import INJECT_SEND_FAILURES_ENV
from dualpath.runtime.cluster import LocalCluster
from dualpath.wire import control as ctl

pytestmark = pytest.mark.timeout(180)


def test_failed_kv_sends_are_rerun_with_the_same_answer(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INJECT_SEND_FAILURES_ENV, "kv_layer=1,hit_layer=1")

    async def main() -> None:
        config = ClusterConfig(
            model="tiny", store_path=str(tmp_path / "store"), decode_kv_bytes=32 << 20,
            pe_buffer_bytes=32 << 20, de_buffer_bytes=32 << 20, engine_start_timeout_s=120,
            prefill_nodes=1, decode_nodes=1, read_path="de",
        )
        cluster = LocalCluster(config)
        await cluster.start()
        reports: list[ctl.TransferFailed] = []
        handle = cluster.books.on_message

        def record(sender: int, msg: ctl.ToScheduler) -> Any:
            if isinstance(msg, ctl.TransferFailed):
                reports.append(msg)
            return handle(sender, msg)

        cluster.books.on_message = record  # type: ignore[method-assign]
        try:
            capacity = kv_capacity(cluster)
            pe, de = (next(e for e in cluster.books.ledger.engines.values() if e.role == role)
                      for role in ("prefill", "decode"))
            prompt = [(11 * i + 5) % 256 for i in range(150)]
            first = await asyncio.wait_for(run_request(cluster, "first", prompt), 60)
            assert [(m.engine_id, m.peer_address) for m in reports] == [
                (pe.engine_id, de.data_address)]
            await asyncio.sleep(1.0)  # the DE persists the prompt's blocks
            longer = prompt + first.tokens + [(7 * i) % 256 for i in range(40)]
            second = await asyncio.wait_for(run_request(cluster, "second", longer), 60)
            assert [(m.engine_id, m.peer_address) for m in reports[1:]] == [
                (de.engine_id, pe.data_address)]  # the DE-path read's hit KV failed
            for result in (first, second):
                assert result.finish.finish_reason == "length" and len(result.tokens) == 8
            # Undisturbed runs (nothing is injected any more) answer the same.
            assert (await run_request(cluster, "first-again", prompt)).tokens == first.tokens
            assert (await run_request(cluster, "second-again", longer)).tokens == second.tokens
            assert len(reports) == 2
            await assert_idle(cluster, capacity)
        finally:
            await cluster.shutdown()

    asyncio.run(main())
