"""The request state machine on every exit path (finish, client gone, abort, engine death and
retry, stale messages of an earlier attempt, failed transfers, shutdown), without processes:
each path must end with the books idle and the integrity check passing."""

from __future__ import annotations

import pytest
from books_harness import DE1, DE2, EOS, HIT, KV_CAPACITY_TOKENS, PE, Books

from dualpath.core.stop_rule import FinishReason
from dualpath.runtime.request_record import Phase
from dualpath.wire import FrameRejected
from dualpath.wire import control as ctl


def test_a_normal_run_walks_the_phases_and_releases_each_part_once() -> None:
    b = Books()
    b.submit("r")
    rec = b.books.record("r")
    assert rec is not None and rec.phase == Phase.QUEUED
    b.schedule()
    a = b.assigned("r")
    assert rec.phase == Phase.LOADING and a.hit_hashes == [HIT]
    de = a.decode_engine
    assert (de, ctl.AssignDecode) in [(e, type(m)) for e, m in b.sent]
    b.report(PE, ctl.ReadDone(PE, a.attempt, 64, 64))
    assert rec.phase == Phase.PREFILLING and b.books.ledger.read_queue[PE] == 0
    b.report(PE, ctl.ReadDone(PE, a.attempt, 64, 64))  # a duplicate releases nothing
    b.books.check_integrity()
    b.report(de, ctl.Tokens(de, a.attempt, [7]))  # the first token may overtake PrefillDone
    assert rec.phase == Phase.DECODING
    b.report(PE, ctl.PrefillDone(PE, a.attempt, 64))
    assert b.books.ledger.engines[PE].tok == 0
    b.report(de, ctl.Tokens(de, a.attempt, [8, 9, 10]))
    b.report(de, ctl.Finished(de, a.attempt, FinishReason.LENGTH, 100, 4, 64))
    assert b.tokens("r") == [7, 8, 9, 10]
    assert b.finish("r").finish_reason == "length" and b.finish("r").cached_tokens == 64
    assert not any(isinstance(m, ctl.Abort) for _, m in b.sent)  # nothing to abort
    b.assert_idle()


def test_client_disconnect_mid_stream_leaves_nothing_behind() -> None:
    b = Books()
    b.submit("r")
    b.schedule()
    a = b.assigned("r")
    b.report(PE, ctl.PrefillDone(PE, a.attempt, 64))
    b.report(PE, ctl.ReadDone(PE, a.attempt, 64, 64))
    b.report(a.decode_engine, ctl.Tokens(a.decode_engine, a.attempt, [7]))
    b.run(b.books.cancel("r"))
    assert (a.decode_engine, ctl.Abort(a.attempt)) in b.sent
    assert b.finish("r").finish_reason == "abort"
    b.assert_idle()


def test_engine_death_requeues_in_arrival_order_and_ignores_stale_attempts() -> None:
    b = Books()
    for i in range(3):
        b.submit(f"r{i}", prompt_len=100 + i)
    b.schedule()
    first = {f"r{i}": b.assigned(f"r{i}") for i in range(3)}
    by_de = {de: [rid for rid, a in first.items() if a.decode_engine == de] for de in (DE1, DE2)}
    victim = max(by_de, key=lambda de: len(by_de[de]))
    on_victim = by_de[victim]
    assert len(on_victim) >= 2
    b.run(b.books.engine_died(victim))
    # Re-queued ahead of everything, in the order they arrived (not reversed).
    assert b.books.waiting_ids() == on_victim
    for rid in on_victim:  # the PE was told to drop the dead attempt
        assert (PE, ctl.Abort(first[rid].attempt)) in b.sent
    b.schedule()
    rid = on_victim[0]
    second = b.assigned(rid)
    assert second.attempt != first[rid].attempt  # a fresh id per attempt
    assert second.attempt.attempt == first[rid].attempt.attempt + 1
    tok = b.books.ledger.engines[PE].tok
    # The PE (alive, same engine) reports the aborted attempt after the retry started:
    # those reports must not touch the new attempt's accounting or stream.
    old = first[rid].attempt
    b.report(PE, ctl.ReadDone(PE, old, 64, 0))
    b.report(PE, ctl.PrefillDone(PE, old, 0))
    assert b.books.ledger.engines[PE].tok == tok
    assert sum(b.books.ledger.read_queue.values()) == 64 * 3
    for i in range(3):
        b.complete(f"r{i}")
        assert b.finish(f"r{i}").finish_reason == "length" and len(b.tokens(f"r{i}")) == 4
    b.assert_idle()


def test_decode_engine_giving_up_during_prefill_aborts_the_prefill() -> None:
    """E.g. the DE refuses the request (out of KV): the PE must drop it too, or on the DE
    read path it waits forever for hit KV that never comes."""
    b = Books()
    b.submit("r")
    b.schedule()
    a = b.assigned("r")
    b.report(a.decode_engine, ctl.Finished(a.decode_engine, a.attempt, FinishReason.ERROR,
                                           100, 0, 0, error="decode engine out of KV memory"))
    assert (PE, ctl.Abort(a.attempt)) in b.sent
    assert b.finish("r").finish_reason == "error"
    b.report(PE, ctl.ReadDone(PE, a.attempt, 64, 0))  # late; ignored
    b.assert_idle()


def test_request_no_decode_engine_can_hold_is_refused_not_queued_forever() -> None:
    """The scheduler waits for KV room; a request larger than any DE would block its group's
    queue for good, so it is refused at once and later requests still run."""
    b = Books()
    b.submit("big", max_tokens=KV_CAPACITY_TOKENS)
    assert b.finish("big").finish_reason == "error" and b.books.num_live == 0
    b.submit("small")
    b.schedule()
    assert b.assigned("small")
    b.run(b.books.cancel("small"))
    # Once no prefill engine is left, a new request is refused too.
    b.run(b.books.engine_died(PE))
    b.submit("late")
    assert b.finish("late").finish_reason == "error"
    b.assert_idle()


def test_shutdown_returns_in_flight_accounting() -> None:
    b = Books()
    b.submit("r0")
    b.submit("r1")
    b.schedule()
    b.submit("queued")
    b.run(b.books.shutdown())
    for rid in ("r0", "r1", "queued"):
        assert b.finish(rid).finish_reason == "abort"
    b.assert_idle()


def test_prefill_engine_dying_before_its_kv_reached_the_decode_engine() -> None:
    """PrefillDone leaves the PE as soon as its KV is queued: if the PE dies before the DE has
    it (no token streamed yet), the request is re-run, not left waiting on the DE forever."""
    b = Books(second_pe=True)
    b.submit("r")
    b.schedule()
    a = b.assigned("r")
    dead = b.pe_of(a)
    b.report(dead, ctl.ReadDone(dead, a.attempt, 64, 64))
    b.report(dead, ctl.PrefillDone(dead, a.attempt, 64))
    b.run(b.books.engine_died(dead))
    assert (a.decode_engine, ctl.Abort(a.attempt)) in b.sent
    b.schedule()
    second = b.assigned("r")
    assert second.attempt != a.attempt and b.pe_of(second) != dead
    b.run(b.books.cancel("r"))
    b.assert_idle()


def test_room_freed_by_a_disconnect_lets_waiting_requests_go() -> None:
    """Each DE holds one of these requests; the third waits for room. When a client goes
    away its room must reach the waiting request (the books ask for a scheduling pass)."""
    b = Books()
    for i in range(3):
        b.submit(f"r{i}", max_tokens=3000)
    b.schedule()
    assert b.books.waiting_ids() == ["r2"]
    wakes = b.wakes
    b.run(b.books.cancel("r0"))
    assert b.wakes == wakes + 1
    b.schedule()
    assert b.books.waiting_ids() == []
    assert b.assigned("r2").decode_engine == b.assigned("r0").decode_engine


def test_decode_engine_dying_after_the_stop_token_ends_the_request() -> None:
    """The DE streamed EOS and died before its Finished: the answer is complete; re-running
    it would generate past the stop token."""
    b = Books()
    b.submit("r", max_tokens=10, ignore_eos=False)
    b.schedule()
    a = b.assigned("r")
    b.report(PE, ctl.ReadDone(PE, a.attempt, 64, 64))
    b.report(PE, ctl.PrefillDone(PE, a.attempt, 64))
    b.report(a.decode_engine, ctl.Tokens(a.decode_engine, a.attempt, [5, EOS]))
    b.run(b.books.engine_died(a.decode_engine))
    assert b.books.waiting_ids() == []  # not re-queued
    assert b.finish("r").finish_reason == "stop" and b.finish("r").completion_tokens == 2
    b.assert_idle()


def test_a_retry_resumes_with_the_streamed_tokens_and_the_rest_of_the_budget() -> None:
    b = Books()
    b.submit("r", max_tokens=10, min_tokens=4, ignore_eos=False)
    b.schedule()
    a = b.assigned("r")
    b.report(a.decode_engine, ctl.Tokens(a.decode_engine, a.attempt, [5, 6]))
    b.run(b.books.engine_died(a.decode_engine))
    b.schedule()
    decode = [m for _, m in b.sent if isinstance(m, ctl.AssignDecode)][-1]
    assert decode.prompt_token_ids == [*range(100), 5, 6]
    assert (decode.stop.max_tokens, decode.stop.min_tokens) == (8, 2)
    assert b.assigned("r").banned_first_token_ids == [EOS]  # still under min_tokens
    b.run(b.books.cancel("r"))
    b.assert_idle()


def test_transfer_failure_reruns_the_request_on_a_new_attempt() -> None:
    """A live PE could not send its KV: both engines drop the attempt, the request is re-run
    under a new id, a second report about the same dead attempt changes nothing, and the
    books end idle."""
    b = Books()
    b.submit("r")
    b.schedule()
    a = b.assigned("r")
    b.report(PE, ctl.ReadDone(PE, a.attempt, 64, 64))
    b.report(PE, ctl.TransferFailed(PE, a.attempt, "tcp://addr1:1", "send timed out"))
    assert (PE, ctl.Abort(a.attempt)) in b.sent
    assert (a.decode_engine, ctl.Abort(a.attempt)) in b.sent
    # The DE also notices (its KV never comes): the same attempt, already dropped.
    b.report(a.decode_engine, ctl.TransferFailed(a.decode_engine, a.attempt, "tcp://x:1", "x"))
    rec = b.books.record("r")
    assert rec is not None and rec.phase == Phase.BACKOFF and rec.transfer_failures == 1
    assert b.retries == [("r", 0.0)]
    b.run(b.books.retry_due("r"))
    assert b.books.waiting_ids() == ["r"]
    b.schedule()
    assert b.assigned("r").attempt != a.attempt
    b.complete("r")
    assert b.finish("r").finish_reason == "length" and len(b.tokens("r")) == 4
    b.assert_idle()


def test_request_whose_transfers_keep_failing_ends_with_an_error() -> None:
    b = Books()
    b.submit("r")
    ids = []
    for _ in range(3):
        b.run(b.books.retry_due("r"))
        b.schedule()
        a = b.assigned("r")
        ids.append(a.attempt)
        b.report(a.decode_engine, ctl.TransferFailed(a.decode_engine, a.attempt,
                                                     "tcp://addr0:1", "send timed out"))
    assert len(set(ids)) == 3
    error = b.finish("r").error
    assert b.finish("r").finish_reason == "error" and error is not None
    assert "tcp://addr0:1" in error and "send timed out" in error
    b.assert_idle()


def test_transfer_report_about_an_attempt_already_rerun_is_ignored() -> None:
    """The peer really died: the supervisor re-ran the request; the survivor's late report
    about the old attempt must neither count nor touch the new attempt."""
    b = Books()
    b.submit("r")
    b.schedule()
    a = b.assigned("r")
    b.run(b.books.engine_died(a.decode_engine))
    b.schedule()
    second = b.assigned("r")
    books = [(e.seq, e.tok, e.kv_used_tokens) for e in b.books.ledger.engines.values()]
    n_sent = len(b.sent)
    b.report(PE, ctl.TransferFailed(PE, a.attempt, "tcp://addr1:1", "timed out"))
    assert len(b.sent) == n_sent and b.books.waiting_ids() == []
    assert books == [(e.seq, e.tok, e.kv_used_tokens) for e in b.books.ledger.engines.values()]
    rec = b.books.record("r")
    assert rec is not None and rec.transfer_failures == 0
    b.report(second.decode_engine, ctl.Finished(second.decode_engine, second.attempt,
                                                FinishReason.LENGTH, 100, 4, 64))
    assert b.finish("r").finish_reason == "length"
    b.assert_idle()


def test_a_message_speaking_for_another_engine_is_rejected() -> None:
    b = Books()
    b.submit("r")
    b.schedule()
    a = b.assigned("r")
    forged = ctl.Tokens(a.decode_engine, a.attempt, [666])
    with pytest.raises(FrameRejected) as exc:
        b.report(PE, forged)  # the PE's connection claims to be the DE
    assert exc.value.reason == "identity"
    b.report(PE, ctl.Tokens(PE, a.attempt, [666]))  # the PE is not this attempt's DE
    assert b.tokens("r") == []
    with pytest.raises(FrameRejected):  # more tokens than the request may have
        b.report(a.decode_engine, ctl.Tokens(a.decode_engine, a.attempt, [1] * 5))
    assert b.tokens("r") == []
    b.run(b.books.cancel("r"))
    b.assert_idle()


def test_the_integrity_check_catches_a_leaked_charge() -> None:
    b = Books()
    b.submit("r")
    b.schedule()
    b.books.check_integrity()
    b.books.ledger.charge_engine(PE, 0, 5, 0)  # a release that never came
    with pytest.raises(Exception, match="books say"):
        b.books.check_integrity()
