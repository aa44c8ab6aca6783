"""The connector's scheduler side: vLLM's events in, the worker's step plans out."""

from __future__ import annotations

from dualpath.integrations.vllm.params import DualPathParams, prompt_digest
from dualpath.integrations.vllm.scheduler_side import ScheduledReq, SchedulerSide
from dualpath.kv.hashing import block_hashes

N = 16
ID = "model-x"
PROMPT = [(i * 7) % 97 + 1 for i in range(5 * N + 3)]  # 5 full blocks + 3 tokens


def _kv(role: str, side: str, hit: int, prompt: list[int] = PROMPT) -> dict[str, object]:
    return DualPathParams(key="ab" * 8, role=role, read_side=side, hit_tokens=hit,  # type: ignore[arg-type]
                          prompt_tokens=len(prompt), digest=prompt_digest(prompt),
                          peer="tcp://127.0.0.1:9").request_params()


def test_prefill_with_a_hit_loads_async_then_layerwise_and_saves_per_path() -> None:
    for side, save_from in (("pe", 0), ("de", 3 * N)):
        s = SchedulerSide("prefill", N, ID)
        assert s.matched_tokens("r", PROMPT, _kv("prefill", side, 3 * N), 0) == (3 * N, True)
        blocks = [10, 11, 12, 13, 14, 15]
        s.after_alloc("r", blocks[:3], 3 * N)
        plan = s.build([])
        (prep,) = plan.prepares
        assert prep.side == side and prep.first_block == 0
        assert list(prep.hashes) == block_hashes(PROMPT, N, ID)[:3]
        # asked again after the async load: nothing more to load
        assert s.matched_tokens("r", PROMPT, _kv("prefill", side, 3 * N), 3 * N) == (0, False)
        plan = s.build([ScheduledReq("r", 3 * N, len(PROMPT) - 3 * N, tuple(blocks))])
        (load,) = plan.loads
        assert load.block_ids == (10, 11, 12)
        (save,) = plan.saves
        assert (save.start_token, save.end_token) == (save_from, len(PROMPT))
        assert save.block_ids == tuple(blocks[save_from // N:])
        report = s.finished("r")
        assert report is not None and report["dualpath"]["hit_tokens"] == 3 * N
        assert s.build([]).forgets[0].req_id == "r"
        assert s.tracked() == 0


def test_prefill_without_hit_saves_every_chunk() -> None:
    s = SchedulerSide("prefill", N, ID)
    assert s.matched_tokens("r", PROMPT, _kv("prefill", "pe", 0), 0) == (0, False)
    s.after_alloc("r", [1, 2, 3], 0)
    plan = s.build([ScheduledReq("r", 0, 2 * N + 5, (1, 2, 3))])
    assert not plan.loads and not plan.prepares
    assert (plan.saves[0].start_token, plan.saves[0].end_token) == (0, 2 * N + 5)
    plan = s.build([ScheduledReq("r", 2 * N + 5, len(PROMPT) - 2 * N - 5, None,
                                 new_block_ids=(4, 5, 6))])
    (save,) = plan.saves
    assert (save.start_token, save.end_token) == (2 * N + 5, len(PROMPT))
    assert save.block_ids == (3, 4, 5, 6)


def test_failed_prefill_relay_stops_loads_and_saves() -> None:
    s = SchedulerSide("prefill", N, ID)
    s.matched_tokens("r", PROMPT, _kv("prefill", "de", 2 * N), 0)
    s.after_alloc("r", [1, 2], 2 * N)
    s.build([])
    s.failed(["r"])
    plan = s.build([ScheduledReq("r", 0, len(PROMPT), (1, 2, 3, 4, 5, 6))])
    assert not plan.loads and not plan.saves
    report = s.finished("r")
    assert report is not None and report["dualpath"]["relay_failed"] is True


def test_decode_receives_the_prompt_then_persists_blocks_as_they_fill() -> None:
    s = SchedulerSide("decode", N, ID)
    assert s.matched_tokens("r", PROMPT, _kv("decode", "de", 2 * N), 0) == (len(PROMPT), True)
    blocks = list(range(20, 26))
    s.after_alloc("r", blocks, len(PROMPT))
    (recv,) = s.build([]).receives
    assert recv.prompt_tokens == len(PROMPT) and recv.hit_tokens == 2 * N
    assert recv.block_ids == tuple(blocks) and len(recv.hashes) == 5
    tokens = list(PROMPT)
    # vLLM recomputes the last prompt token, then decodes one token per step
    computed = len(PROMPT) - 1
    persisted: list[tuple[int, str]] = []
    for step in range(2 * N):
        tokens.append(1000 + step)
        new = (26,) if len(tokens) > 6 * N and 26 not in blocks else ()
        if new:
            blocks.append(26)
        sched = ScheduledReq("r", computed, 1, tuple(blocks) if step == 0 else None,
                             new_block_ids=new, all_token_ids=tokens)
        plan = s.build([sched])
        persisted += [(p.block_id, p.block_hash) for p in plan.persists]
        computed += 1
    # 0-4 come from the DE buffer; 5 and 6 fill during decode (114 tokens computed); the
    # last sampled token's KV is never computed
    want = block_hashes(tokens, N, ID)
    assert computed == len(tokens) - 1 == 114
    assert persisted == [(25, want[5]), (26, want[6])]


def test_decode_after_a_failed_relay_persists_the_prompt_from_the_cache() -> None:
    s = SchedulerSide("decode", N, ID)
    s.matched_tokens("r", PROMPT, _kv("decode", "pe", 0), 0)
    s.after_alloc("r", list(range(6)), len(PROMPT))
    s.build([])
    s.failed(["r"])
    plan = s.build([ScheduledReq("r", 0, len(PROMPT), tuple(range(6)),
                                 all_token_ids=PROMPT)])
    assert [p.block_id for p in plan.persists] == [0, 1, 2, 3, 4]
    assert [p.block_hash for p in plan.persists] == block_hashes(PROMPT, N, ID)


def test_requests_with_bad_or_foreign_params_are_served_plain() -> None:
    s = SchedulerSide("decode", N, ID)
    assert s.matched_tokens("a", PROMPT, None, 0) == (0, False)
    assert s.matched_tokens("b", PROMPT, _kv("prefill", "pe", 0), 0) == (0, False)
    assert s.matched_tokens("c", [*PROMPT[:-1], 5], _kv("decode", "pe", 0), 0) == (0, False)
    assert s.matched_tokens("d", PROMPT, {"dualpath": {"key": 1}}, 0) == (0, False)
    assert s.matched_tokens("e", PROMPT, _kv("decode", "pe", 16 + 1), 0) == (0, False)
    assert s.rejected == 4 and s.tracked() == 0
