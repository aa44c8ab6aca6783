"""The scheduler process of a netns deployment: `python -m dualpath.bench.netns_worker TASK`.

Runs inside the testbed's front-end namespace (started by `bench.netns_cluster`): it starts a
`LocalCluster` with no local engines, waits until the expected prefill and decode nodes have
joined (each a `dualpath node` agent in its own namespace) and the cluster is ready, runs the
task, and writes one JSON object to the task's `out` path.

Tasks:
- "conversation": multi-turn chats (tokens and cached tokens of every turn);
- "workload": a storage-bound offline workload (`bench.storage_bound.build_workload`),
  phase "warm" or "measured", through the same `ClusterTarget` as the one-host benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

from dualpath.core.config import ClusterConfig
from dualpath.core.requests import FinishEvent, GenerateRequest, SamplingParams, TokenEvent
from dualpath.runtime.cluster import LocalCluster

logger = logging.getLogger(__name__)


async def _ready(cluster: LocalCluster, prefill: int, decode: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        live = cluster.books.ledger.live_engines()
        roles = [e.role for e in live]
        if roles.count("prefill") >= prefill and roles.count("decode") >= decode \
                and cluster.is_ready():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {roles} joined within {timeout_s:g} s")
        await asyncio.sleep(0.2)


async def _turn(cluster: LocalCluster, rid: str, prompt: list[int], max_tokens: int,
                timeout_s: float) -> dict[str, Any]:
    tokens: list[int] = []
    finish: FinishEvent | None = None
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    async def run() -> None:
        nonlocal finish
        async for event in cluster.generate(GenerateRequest(rid, tuple(prompt), params)):
            if isinstance(event, TokenEvent):
                tokens.extend(event.token_ids)
            else:
                finish = event

    try:
        await asyncio.wait_for(run(), timeout_s)
    except TimeoutError:
        return {"tokens": tokens, "finish_reason": "hung", "cached_tokens": 0, "error": None}
    assert finish is not None
    return {"tokens": tokens, "finish_reason": finish.finish_reason,
            "cached_tokens": finish.cached_tokens, "error": finish.error}


async def _conversations(cluster: LocalCluster, task: dict[str, Any]) -> dict[str, Any]:
    """`chats` concurrent multi-turn chats; each prompt = previous prompt + answer + append.
    Each chat completes `turns` turns, and more (up to `max_turns`) until `duration_s` passed;
    a failed turn is tried again a second later (at most `4 * max_turns` attempts). A prompt
    longer than `max_prompt` starts its chat over from the first prompt."""
    turns, chats = int(task.get("turns", 3)), int(task.get("chats", 1))
    duration_s, max_turns = float(task.get("duration_s", 0.0)), int(task.get("max_turns", 60))
    until = time.monotonic() + duration_s
    max_tokens = int(task.get("max_tokens", 8))
    max_prompt = int(task.get("max_prompt", 3000))  # tokens; then a chat starts over
    timeout_s = float(task.get("turn_timeout_s", 120))

    async def chat(c: int) -> list[dict[str, Any]]:
        prompt = [(11 * i + 5 + 3 * c) % 256 for i in range(int(task.get("first_len", 150)))]
        first = prompt
        out: list[dict[str, Any]] = []
        tag = task.get("tag", "c")
        turn = 0  # turns completed; a failed attempt is retried and does not count
        for attempt in range(4 * max_turns):
            if turn >= max_turns or (turn >= turns and time.monotonic() >= until):
                break
            result = await _turn(cluster, f"{tag}{c}-t{turn}-a{attempt}", prompt, max_tokens,
                                 timeout_s)
            out.append(result)
            if result["finish_reason"] not in ("length", "stop"):
                await asyncio.sleep(1.0)  # like a client: try this turn again in a moment
                continue
            prompt = prompt + result["tokens"] + [(7 * i + turn + c) % 256 for i in range(40)]
            if len(prompt) > max_prompt:  # a long run: start the conversation over
                prompt = first
            turn += 1
            await asyncio.sleep(float(task.get("persist_wait_s", 0.5)))
        return out

    results = await asyncio.gather(*(chat(c) for c in range(chats)))
    return {"chats": results}


async def _workload(cluster: LocalCluster, task: dict[str, Any]) -> dict[str, Any]:
    from dualpath.bench.cluster_target import ClusterTarget
    from dualpath.bench.driver import run_workload_async
    from dualpath.bench.storage_bound import build_workload
    from dualpath.workload.metrics import build_report
    from dualpath.workload.tokens import TokenSource

    warm, measured = build_workload(argparse.Namespace(**task["workload"]))
    workload = warm if task.get("phase") == "warm" else measured
    tokens = TokenSource(cluster.model_config.vocab_size,
                         forbidden_ids=cluster.tokenizer.eos_token_ids, seed=0)
    result = await run_workload_async(ClusterTarget(cluster), workload, tokens=tokens,
                                      progress=False, desc=cluster.config.system)
    report = build_report(result.records, mode="offline",
                          unfinished_turns=result.unfinished_turns)
    return {"report": report}


async def main_async(task: dict[str, Any]) -> dict[str, Any]:
    config = ClusterConfig.from_json(json.dumps(task["config"]))
    cluster = LocalCluster(config)
    await cluster.start()
    try:
        prefill, decode = task["expect"]
        await _ready(cluster, prefill, decode, float(task.get("ready_timeout_s", 300)))
        with open(task["out"] + ".ready", "w") as f:  # fault drills are timed from here
            f.write("ready\n")
        started = time.monotonic()
        kind = task["kind"]
        if kind == "conversation":
            out = await _conversations(cluster, task)
        elif kind == "workload":
            out = await _workload(cluster, task)
        else:
            raise ValueError(f"unknown task {kind!r}")
        out["elapsed_s"] = time.monotonic() - started
        with open(task["out"] + ".main-done", "w") as f:
            f.write("done\n")
        again = task.get("after")  # once every node is back: does the cluster serve again?
        if again is not None:
            await _ready(cluster, prefill, decode, float(again.get("ready_timeout_s", 300)))
            out["after"] = await _conversations(cluster, {"tag": "after", **task, **again,
                                                          "duration_s": 0.0})
        await asyncio.sleep(1.2)  # the engines' last counter reports
        out["counters"] = {str(k): v for k, v in cluster.counters().items()}
        out["engines"] = {str(e.engine_id): {"role": e.role, "node": e.node_id,
                                             "alive": e.alive}
                          for e in cluster.books.ledger.engines.values()}
        out["metrics"] = {"internal_frames_rejected":
                          dict(cluster.metrics_snapshot().internal_frames_rejected),
                          "engine_restarts": cluster.metrics.engine_restarts}
        return out
    finally:
        await cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("task", help="JSON file describing the task")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    with open(args.task) as f:
        task = json.load(f)
    out = asyncio.run(main_async(task))
    with open(task["out"], "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
