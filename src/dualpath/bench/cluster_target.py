"""A benchmark `Target` that runs turns on an in-process `LocalCluster` (no HTTP in between).

Used by `dualpath bench storage-bound`, where the HTTP layer would only add noise: the engines
are real processes, the store is real files and the NICs are enforced exactly as in `serve`.
"""

from __future__ import annotations

import asyncio
import itertools

from dualpath.bench.target import Target, TurnRequest, TurnResult
from dualpath.core.errors import EngineError
from dualpath.core.requests import FinishEvent, GenerateRequest, SamplingParams, TokenEvent
from dualpath.runtime.cluster import LocalCluster


class ClusterTarget(Target):
    """Forces each turn's generation length (`min_tokens = max_tokens`, `ignore_eos`)."""

    needs_token_ids = True

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self._ids = itertools.count()

    async def run_turn(self, request: TurnRequest) -> TurnResult:
        if request.prompt_token_ids is None:
            raise EngineError("ClusterTarget needs prompt token ids")
        loop = asyncio.get_running_loop()
        params = SamplingParams(max_tokens=request.gen_tokens, min_tokens=request.gen_tokens,
                                ignore_eos=True, temperature=0.0)
        rid = f"a{request.agent_id}-t{request.turn_index}-{next(self._ids)}"
        times: list[float] = []
        tokens: list[int] = []
        finish: FinishEvent | None = None
        async for event in self.cluster.generate(
                GenerateRequest(rid, request.prompt_token_ids, params)):
            if isinstance(event, TokenEvent):
                now = loop.time()
                times.extend(now for _ in event.token_ids)
                tokens.extend(event.token_ids)
            else:
                finish = event
        if finish is None or finish.finish_reason not in ("length", "stop") or not times:
            raise EngineError(f"turn {rid} failed: {finish}")
        return TurnResult(first_token_s=times[0], second_token_s=times[1] if len(times) > 1
                          else None, end_s=loop.time(), generated_tokens=len(tokens),
                          cached_tokens=finish.cached_tokens,
                          generated_token_ids=tuple(tokens))

    def describe(self) -> dict[str, object]:
        return {"target": "local-cluster", "system": self.cluster.config.system}
