"""From a request to a decision: prompt tokens, stored hit, `GlobalScheduler` placement.

`Planner` owns the router's waiting queue and books. `plan(token_ids, max_tokens)` computes
the prompt's chained block hashes (`dualpath.kv.hashing`, the model identity of the served
directory), asks the store's prefix index how many leading blocks are stored (at least one
prompt token is always left to compute), queues a `RequestInfo` and waits until
`GlobalScheduler.schedule(waiting, books.view())` places it; `release_*` undo the books.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass

from dualpath.integrations.vllm.params import DualPathParams, prompt_digest
from dualpath.integrations.vllm.router.books import RouterBooks
from dualpath.integrations.vllm.router.cluster_spec import InstanceInfo
from dualpath.kv.hashing import block_hashes
from dualpath.kv.store import KVStore
from dualpath.scheduler import GlobalScheduler, Placement, RequestInfo
from dualpath.scheduler.charges import Charge, decode_kv_tokens


@dataclass(frozen=True)
class Decision:
    """Where one request goes and what both instances are told."""

    key: str
    prefill: InstanceInfo
    decode: InstanceInfo
    read_side: str
    hit_tokens: int
    prompt_tokens: int
    assignment: Charge
    prefill_params: DualPathParams
    decode_params: DualPathParams


class Planner:
    """The router's queue + books + scheduler (all on the router's event loop)."""

    def __init__(self, instances: tuple[InstanceInfo, ...], scheduler: GlobalScheduler,
                 store: KVStore | None, block_tokens: int, identity: str) -> None:
        self.instances = instances
        self.books = RouterBooks(instances)
        self.scheduler = scheduler
        self.store = store
        self.block_tokens = block_tokens
        self.identity = identity
        self._ids = itertools.count()
        self._waiting: list[tuple[RequestInfo,
                                  asyncio.Future[tuple[Placement, Charge]]]] = []
        self.placed = 0
        self.hit_tokens_total = 0
        self.prompt_tokens_total = 0
        self.by_side: dict[str, int] = {"pe": 0, "de": 0}

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def hit_tokens(self, token_ids: list[int]) -> int:
        """Leading prompt tokens whose KV is stored (whole blocks; never the whole prompt)."""
        if self.store is None or len(token_ids) <= self.block_tokens:
            return 0
        hashes = block_hashes(token_ids, self.block_tokens, self.identity)
        limit = (len(token_ids) - 1) // self.block_tokens
        return min(self.store.longest_prefix(hashes[:limit]), limit) * self.block_tokens

    async def plan(self, token_ids: list[int], max_tokens: int) -> Decision:
        hit = self.hit_tokens(token_ids)
        room = decode_kv_tokens(len(token_ids), max(0, max_tokens), self.block_tokens)
        info = RequestInfo(request_id=next(self._ids), prompt_tokens=len(token_ids),
                           cached_tokens=hit, decode_reserve_tokens=room - len(token_ids))
        fut: asyncio.Future[tuple[Placement, Charge]] = (
            asyncio.get_running_loop().create_future())
        self._waiting.append((info, fut))
        self.schedule()
        try:
            placement, assignment = await fut
        except asyncio.CancelledError:
            self._waiting = [(i, f) for i, f in self._waiting if f is not fut]
            if fut.done() and not fut.cancelled():
                _, a = fut.result()
                self.books.prefill_done(a)
                self.books.decode_done(a)
                self.schedule()
            raise
        return self._decision(placement, info, token_ids, assignment)

    def schedule(self) -> None:
        """Place what the scheduler will place now; the rest keeps waiting in order."""
        self._waiting = [(i, f) for i, f in self._waiting if not f.done()]
        if not self._waiting:
            return
        result = self.scheduler.schedule([i for i, _ in self._waiting], self.books.view())
        placed = {p.request_id: p for p in result.placements}
        keep: list[tuple[RequestInfo, asyncio.Future[tuple[Placement, Charge]]]] = []
        for info, fut in self._waiting:
            p = placed.get(info.request_id)
            if p is None:
                keep.append((info, fut))
                continue
            fut.set_result((p, self.books.assign(p, info)))
        self._waiting = keep

    def release_prefill(self, a: Charge) -> None:
        self.books.prefill_done(a)
        self.schedule()

    def release_decode(self, a: Charge) -> None:
        self.books.decode_done(a)
        self.schedule()

    def _decision(self, p: Placement, info: RequestInfo, token_ids: list[int],
                  assignment: Charge) -> Decision:
        pe, de = self.instances[p.pe_engine], self.instances[p.de_engine]
        side = "de" if p.read.side == "de" else "pe"
        key = uuid.uuid4().hex
        common = {"key": key, "read_side": side, "hit_tokens": info.cached_tokens,
                  "prompt_tokens": info.prompt_tokens, "digest": prompt_digest(token_ids)}
        self.placed += 1
        self.hit_tokens_total += info.cached_tokens
        self.prompt_tokens_total += info.prompt_tokens
        self.by_side[side] += 1
        return Decision(
            key=key, prefill=pe, decode=de, read_side=side, hit_tokens=info.cached_tokens,
            prompt_tokens=info.prompt_tokens, assignment=assignment,
            prefill_params=DualPathParams(role="prefill", peer=de.relay, **common),  # type: ignore[arg-type]
            decode_params=DualPathParams(role="decode", peer=pe.relay, **common),  # type: ignore[arg-type]
        )
