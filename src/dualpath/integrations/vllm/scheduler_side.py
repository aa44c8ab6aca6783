"""The connector's scheduler side: vLLM's scheduler events in, one `StepPlan` per step out.

Pure bookkeeping (no vLLM import, no I/O, no clock): `connector.py` translates vLLM's
`Request` / `SchedulerOutput` into the calls below, so this logic is unit-tested with plain
data. One owner per request: `_Req`, created on the first `matched_tokens` call of a request
that carries `kv_transfer_params["dualpath"]`, dropped by `finished`.

Prefill instance (P). A request whose prompt has a stored hit (`hit_tokens > 0`, decided by
the router) is loaded asynchronously first (vLLM parks it in WAITING_FOR_REMOTE_KVS): PE path
= read the hit into the PE buffer, DE path = wait until D has it. When vLLM then schedules it,
the hit is copied into the paged cache layer by layer during that forward (`LayerLoad`), and
every step's KV is streamed to D after each layer (`LayerSave`): from token 0 on the PE path
(hit + miss), from `hit_tokens` on the DE path (miss only).

Decode instance (D). Every prompt token is reported as external and loaded asynchronously
(`ReceivePrompt`); vLLM recomputes the last prompt token itself to get the first logits. Once
the request runs, each block that fills up is persisted (`PersistBlock`); the prompt's full
blocks are persisted by the worker straight from the DE buffer.

Failures: a request whose relay failed (reported through `failed`) gets no more loads or
saves; vLLM recomputes it (`kv_load_failure_policy="recompute"`), D then persists its blocks
from the paged cache instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dualpath.integrations.vllm.params import DualPathParams, ParamsError
from dualpath.integrations.vllm.specs import (
    Forget,
    LayerLoad,
    LayerSave,
    PersistBlock,
    PrepareLoad,
    ReceivePrompt,
    StepPlan,
)
from dualpath.kv.hashing import block_hashes

log = logging.getLogger(__name__)


@dataclass
class _Req:
    params: DualPathParams
    prompt_ids: tuple[int, ...]
    prompt_hashes: list[str]  # full prompt blocks; grows with decode blocks on D
    local_tokens: int = 0  # tokens vLLM had computed locally when we matched
    external_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    async_started: bool = False
    loaded: bool = False  # P: LayerLoad emitted; D: not used
    failed: bool = False
    persist_next: int = 0  # D: next block index to persist from the paged cache


@dataclass(frozen=True)
class ScheduledReq:
    """One request in this step's schedule, as vLLM reports it."""

    req_id: str
    num_computed_tokens: int  # before this step
    num_scheduled_tokens: int
    block_ids: tuple[int, ...] | None  # all block ids (new / resumed) or None
    new_block_ids: tuple[int, ...] = ()  # blocks appended this step (running requests)
    all_token_ids: Sequence[int] = ()  # D: prompt + output so far (for block hashes)


class SchedulerSide:
    """Scheduler-side state of one DualPath connector (one vLLM instance)."""

    def __init__(self, role: str, block_tokens: int, model_identity: str) -> None:
        self.role = role
        self.block_tokens = block_tokens
        self.identity = model_identity
        self._reqs: dict[str, _Req] = {}
        self._prepares: list[PrepareLoad] = []
        self._receives: list[ReceivePrompt] = []
        self._forgets: list[Forget] = []
        self.rejected = 0  # requests whose dualpath params were refused

    def tracked(self) -> int:
        return len(self._reqs)

    def is_tracked(self, req_id: str) -> bool:
        return req_id in self._reqs

    # -- vLLM: get_num_new_matched_tokens / update_state_after_alloc ------------------------

    def matched_tokens(self, req_id: str, prompt_ids: Sequence[int], kv_params: object,
                       num_computed: int) -> tuple[int, bool]:
        """(external tokens, load asynchronously) for a request vLLM wants to schedule."""
        req = self._reqs.get(req_id)
        if req is None:
            req = self._admit(req_id, prompt_ids, kv_params)
            if req is None:
                return 0, False
        if req.async_started or req.failed:
            return 0, False  # asked again after the load (or a recompute): nothing more
        if self.role == "prefill":
            hit = req.params.hit_tokens
            if hit <= num_computed:
                return 0, False
            req.local_tokens = num_computed
            return hit - num_computed, True
        req.local_tokens = num_computed
        return len(req.prompt_ids) - num_computed, True

    def after_alloc(self, req_id: str, block_ids: Sequence[int], num_external: int) -> None:
        req = self._reqs.get(req_id)
        if req is None:
            return
        req.block_ids = list(block_ids)
        if num_external <= 0 or req.async_started:
            return
        req.async_started = True
        req.external_tokens = num_external
        p, n = req.params, self.block_tokens
        if self.role == "prefill":
            first = req.local_tokens // n
            self._prepares.append(PrepareLoad(
                req_id=req_id, key=p.key, side=p.read_side, peer=p.peer,
                hashes=tuple(req.prompt_hashes[first:p.hit_blocks(n)]), first_block=first))
        else:
            num_blocks = -(-len(req.prompt_ids) // n)
            self._receives.append(ReceivePrompt(
                req_id=req_id, key=p.key, side=p.read_side, peer=p.peer,
                hit_tokens=p.hit_tokens, prompt_tokens=len(req.prompt_ids),
                first_token=req.local_tokens, block_ids=tuple(block_ids[:num_blocks]),
                hashes=tuple(req.prompt_hashes)))
            # The worker persists the prompt's full blocks (past the stored hit) from the
            # DE buffer; blocks after that come from the paged cache.
            req.persist_next = len(req.prompt_ids) // n

    # -- vLLM: update_connector_output / request_finished ------------------------------------

    def failed(self, req_ids: Iterable[str]) -> None:
        """The worker gave these requests' relay up; vLLM recomputes them."""
        for req_id in req_ids:
            req = self._reqs.get(req_id)
            if req is not None and not req.failed:
                req.failed = True
                req.persist_next = 0  # D: nothing reached the store from the buffer

    def finished(self, req_id: str) -> dict[str, object] | None:
        """Drop a finished request; returns what goes into the response's kv_transfer_params."""
        req = self._reqs.pop(req_id, None)
        if req is None:
            return None
        p = req.params
        self._forgets.append(Forget(req_id=req_id, key=p.key, peer=p.peer))
        return {"dualpath": {"key": p.key, "role": self.role, "read_side": p.read_side,
                             "hit_tokens": p.hit_tokens if not req.failed else 0,
                             "relay_failed": req.failed}}

    # -- vLLM: build_connector_meta ----------------------------------------------------------

    def build(self, scheduled: Sequence[ScheduledReq]) -> StepPlan:
        """This step's plan; resets the pending prepares / receives / forgets."""
        loads: list[LayerLoad] = []
        saves: list[LayerSave] = []
        persists: list[PersistBlock] = []
        for s in scheduled:
            req = self._reqs.get(s.req_id)
            if req is None:
                continue
            if s.block_ids is not None:
                req.block_ids = list(s.block_ids)
            else:
                req.block_ids.extend(s.new_block_ids)
            if req.failed and self.role == "prefill":
                continue
            if self.role == "prefill":
                self._plan_prefill(s, req, loads, saves)
            else:
                self._plan_decode(s, req, persists)
        plan = StepPlan(forgets=tuple(self._forgets), prepares=tuple(self._prepares),
                        receives=tuple(self._receives), loads=tuple(loads),
                        saves=tuple(saves), persists=tuple(persists))
        self._forgets.clear()
        self._prepares.clear()
        self._receives.clear()
        return plan

    def _plan_prefill(self, s: ScheduledReq, req: _Req, loads: list[LayerLoad],
                      saves: list[LayerSave]) -> None:
        p, n = req.params, self.block_tokens
        prompt = len(req.prompt_ids)
        first_step = not req.loaded
        if first_step and req.async_started:
            first = req.local_tokens // n
            loads.append(LayerLoad(req_id=s.req_id, key=p.key, side=p.read_side,
                                   block_ids=tuple(req.block_ids[first:p.hit_blocks(n)]),
                                   first_block=first))
        req.loaded = True
        end = min(s.num_computed_tokens + s.num_scheduled_tokens, prompt)
        if first_step:
            start = 0 if p.read_side == "pe" else p.hit_tokens
        else:
            start = s.num_computed_tokens
        if end <= start:
            return
        saves.append(LayerSave(req_id=s.req_id, key=p.key, peer=p.peer, start_token=start,
                               end_token=end,
                               block_ids=tuple(req.block_ids[start // n:-(-end // n)])))

    def _plan_decode(self, s: ScheduledReq, req: _Req, persists: list[PersistBlock]) -> None:
        n = self.block_tokens
        computed = min(s.num_computed_tokens + s.num_scheduled_tokens, len(s.all_token_ids))
        while (req.persist_next + 1) * n <= computed and req.persist_next < len(req.block_ids):
            j = req.persist_next
            if j >= len(req.prompt_hashes):
                parent = req.prompt_hashes[j - 1] if j else None
                tokens = list(s.all_token_ids[j * n:(j + 1) * n])
                req.prompt_hashes.extend(block_hashes(tokens, n, self.identity, parent=parent))
            persists.append(PersistBlock(req_id=s.req_id, key=req.params.key,
                                         block_id=req.block_ids[j],
                                         block_hash=req.prompt_hashes[j],
                                         parent_hash=req.prompt_hashes[j - 1] if j else None))
            req.persist_next = j + 1

    # -- helpers ----------------------------------------------------------------------------

    def _admit(self, req_id: str, prompt_ids: Sequence[int], kv_params: object) -> _Req | None:
        try:
            params = DualPathParams.from_request_params(kv_params)  # type: ignore[arg-type]
            if params is None:
                return None
            if params.role != self.role:
                raise ParamsError(f"request {params.key} is for a {params.role} instance, "
                                  f"this one is {self.role}")
            params.check_blocks(self.block_tokens)
            params.check_prompt(prompt_ids)
        except ParamsError as exc:
            self.rejected += 1
            log.error("request %s: ignoring its dualpath params (served as plain vLLM): %s",
                      req_id, exc)
            return None
        hashes = block_hashes(list(prompt_ids), self.block_tokens, self.identity)
        req = _Req(params=params, prompt_ids=tuple(prompt_ids), prompt_hashes=hashes)
        self._reqs[req_id] = req
        return req
