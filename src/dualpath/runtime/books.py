"""`RequestBooks`: the one owner of every request's life and of the load the scheduler sees.

Pure: no sockets, no asyncio, no clock. Events come in (a request arrives, the scheduler is
asked to place, an engine reports, an engine dies, a client goes away, a retry timer fires);
commands go out (`Send` a message to an engine, `Emit` an event to a client, `RetryAfter` a
delay, `Wake` the scheduler). The scheduler process (`runtime.cluster`) is a thin shell that
does the I/O for these commands.

A request's phases (`request_record.Phase`), and what moves it:

    QUEUED --placed--> LOADING (hit prefix to read) | PREFILLING (nothing to read)
    LOADING --ReadDone--> PREFILLING --PrefillDone / first Tokens--> DECODING
    placed --Finished--> FINISHED (stop, length) | FAILED (error)
    placed --TransferFailed--> BACKOFF --retry_due--> QUEUED      (at most 3 failures)
    placed --engine died--> QUEUED (ahead of newer requests) | FINISHED (had already ended)
    any live --cancel--> FINISHED (abort);  no prefill or decode engine left --> FAILED

Every placement charges its `Charge` (scheduler.charges) to the `Ledger`; the parts are
released exactly once each: READ on ReadDone, PREFILL on PrefillDone, everything still held
when the attempt ends (finished, failed, aborted, dropped for a retry).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dualpath.core.errors import SchedulingError
from dualpath.core.requests import FinishEvent, GenerateEvent, GenerateRequest, TokenEvent
from dualpath.core.stop_rule import FinishReason, StopRule
from dualpath.runtime.ledger import Ledger
from dualpath.runtime.request_record import Attempt, Phase, RequestRecord
from dualpath.scheduler import GlobalScheduler, Placement, RequestInfo
from dualpath.scheduler.charges import ALL_PARTS, Charge, ChargePart
from dualpath.wire import FrameRejected
from dualpath.wire import control as ctl
from dualpath.wire.types import AttemptId

# The third failed transfer of one request ends it with an error (a pair that keeps failing
# must not retry forever); a dead engine is the supervisor's business and never counts here.
TRANSFER_FAILURE_LIMIT = 3

Lookup = Callable[[Sequence[int]], tuple[list[str], int]]


@dataclass(frozen=True)
class Send:
    engine_id: int
    message: ctl.ToEngine


@dataclass(frozen=True)
class Emit:
    request_id: str
    event: GenerateEvent


@dataclass(frozen=True)
class RetryAfter:
    request_id: str
    delay_s: float


@dataclass(frozen=True)
class Wake:
    """Something changed that may let waiting requests be placed: run the scheduler."""


Command = Send | Emit | RetryAfter | Wake


@dataclass(frozen=True)
class BooksConfig:
    block_size: int
    layerwise: bool  # basic loads the whole prefix before prefill
    eos_token_ids: tuple[int, ...]
    transfer_retry_delay_s: float  # > the engines' fast-fail window for a failed peer


class RequestBooks:
    """See the module docstring. `ledger` is read by the shell for metrics, never written."""

    def __init__(self, config: BooksConfig, lookup: Lookup, *, record_calls: bool = False) -> None:
        """`lookup(prompt)` -> (hashes of the stored leading blocks, cached tokens);
        `record_calls` keeps every scheduler call's inputs and dispatches (tests)."""
        self.config = config
        self.ledger = Ledger()
        self._lookup = lookup
        self._records: dict[str, RequestRecord] = {}
        self._waiting: list[RequestRecord] = []
        self._order = itertools.count()
        self._record = record_calls
        self.scheduler_calls: list[tuple[list[RequestInfo], Any, list[tuple[Any, ...]]]] = []

    # ---- queries ---------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return sum(1 for r in self._records.values() if not r.phase.placed)

    @property
    def num_live(self) -> int:
        return len(self._records)

    def record(self, request_id: str) -> RequestRecord | None:
        return self._records.get(request_id)

    def live(self) -> list[RequestRecord]:
        """Every request not yet ended, in arrival order (read only)."""
        return sorted(self._records.values(), key=lambda r: r.order)

    def waiting_ids(self) -> list[str]:
        return [r.rid for r in self._waiting]

    # ---- engines ---------------------------------------------------------------------------

    def engine_joined(self, hello: ctl.Hello) -> list[Command]:
        self.ledger.add_engine(hello)
        return [Wake()]

    def engine_died(self, engine_id: int) -> list[Command]:
        """Re-run every request the engine was part of. A PE reports PrefillDone as soon as
        its KV is queued to the DE; until the DE's first token of that attempt arrives, the
        KV may have died with the PE, so those requests are re-run too."""
        if not self.ledger.alive(engine_id):
            return []
        self.ledger.mark_dead(engine_id)
        out: list[Command] = []
        affected = sorted((r for r in self._records.values() if r.attempt is not None and (
            engine_id == r.attempt.de or (engine_id == r.attempt.pe and (
                ChargePart.PREFILL in r.attempt.held
                or len(r.generated) == r.attempt.generated_before)))), key=lambda r: r.order)
        requeued = [r for r in affected if self._drop_attempt(r, out)]
        for r in requeued:
            r.phase = Phase.QUEUED
        self._waiting = sorted(requeued, key=lambda r: r.order) + self._waiting
        if not self.ledger.has_role("prefill") or not self.ledger.has_role("decode"):
            for r in sorted(self._records.values(), key=lambda r: r.order):
                self._end(r, FinishReason.ERROR, out, error="no live prefill or decode engine left")
        out.append(Wake())
        return out

    # ---- client side -----------------------------------------------------------------------

    def submit(self, request: GenerateRequest) -> list[Command]:
        """A new request; refused at once (an error FinishEvent) when no decode engine could
        ever hold it or no prefill engine is left."""
        if request.request_id in self._records:
            raise SchedulingError(f"request id {request.request_id!r} is already in flight")
        prompt = list(request.prompt_token_ids)
        hashes, cached = self._lookup(prompt)
        rec = RequestRecord(request, next(self._order),
                            StopRule.of(request.sampling, self.config.eos_token_ids), prompt,
                            hashes, cached, self.config.block_size)
        room = self.ledger.largest_decode_kv_tokens()
        error = None
        if rec.kv_tokens > room:  # the scheduler would wait for room forever
            error = (f"prompt + max_tokens needs {rec.kv_tokens} tokens of KV; the largest "
                     f"decode engine holds {room}")
        elif not self.ledger.has_role("prefill"):
            error = "no live prefill engine left"
        if error is not None:
            return [Emit(rec.rid, FinishEvent(rec.rid, FinishReason.ERROR, len(prompt), 0, 0,
                                              error=error))]
        self._records[rec.rid] = rec
        self._waiting.append(rec)
        return [Wake()]

    def cancel(self, request_id: str, reason: FinishReason = FinishReason.ABORT,
               error: str | None = None) -> list[Command]:
        """The client went away or aborted (or the server stops): end the request now."""
        rec = self._records.get(request_id)
        out: list[Command] = []
        if rec is not None:
            self._end(rec, reason, out, error=error)
            out.append(Wake())  # the freed room may let waiting requests go
        return out

    def shutdown(self) -> list[Command]:
        out: list[Command] = []
        for rid in list(self._records):
            out += self.cancel(rid, FinishReason.ABORT, "server shutting down")
        return out

    def retry_due(self, request_id: str) -> list[Command]:
        rec = self._records.get(request_id)
        if rec is None or rec.phase != Phase.BACKOFF:
            return []
        rec.phase = Phase.QUEUED
        self._waiting.insert(0, rec)
        return [Wake()]

    # ---- scheduling ------------------------------------------------------------------------

    def schedule(self, scheduler: GlobalScheduler) -> list[Command]:
        """One scheduler call over the waiting queue; dispatches what it placed."""
        if not self._waiting:
            return []
        infos = [RequestInfo(r.rid, len(r.prompt), r.cached_tokens,
                             decode_reserve_tokens=r.kv_tokens - len(r.prompt))
                 for r in self._waiting]
        view = self.ledger.view()
        result = scheduler.schedule(infos, view)
        out: list[Command] = []
        placed: set[str] = set()
        dispatched: list[tuple[Any, ...]] = []
        by_id = {r.rid: (r, info) for r, info in zip(self._waiting, infos, strict=True)}
        for p in result.placements:
            rec, info = by_id[str(p.request_id)]
            self._dispatch(rec, info, p, out)
            placed.add(rec.rid)
            dispatched.append((rec.rid, p.pe_engine, p.de_engine, p.read.side))
        if self._record:
            self.scheduler_calls.append((infos, view, dispatched))
        self._waiting = [r for r in self._waiting if r.rid not in placed]
        return out

    def _dispatch(self, rec: RequestRecord, info: RequestInfo, p: Placement,
                  out: list[Command]) -> None:
        if p.read.side == "split":
            raise SchedulingError("split reads are a simulator-only read policy")
        rec.attempts += 1
        charge = Charge.of(info, p.pe_engine, p.de_engine, p.pe_node, p.de_node, p.read)
        stop = rec.stop.after(len(rec.generated))
        att = Attempt(AttemptId(rec.rid, rec.attempts), p, charge, stop, len(rec.generated))
        att.held = set(ALL_PARTS)
        charge.apply(self.ledger)
        rec.attempt = att
        rec.phase = Phase.LOADING if charge.read_tokens else Phase.PREFILLING
        if rec.first_cached_tokens is None:
            rec.first_cached_tokens = rec.cached_tokens
        s = rec.request.sampling
        side = p.read.side
        engines = self.ledger.engines
        out.append(Send(att.de, ctl.AssignDecode(
            attempt=att.id, prompt_token_ids=rec.prompt, hit_hashes=rec.hashes, read_path=side,
            prefill_engine=att.pe, prefill_address=engines[att.pe].data_address, stop=stop,
            temperature=s.temperature, top_p=s.top_p, seed=s.seed,
            kv_tokens=charge.decode_kv_tokens)))
        out.append(Send(att.pe, ctl.AssignPrefill(
            attempt=att.id, prompt_token_ids=rec.prompt, hit_hashes=rec.hashes, read_path=side,
            decode_engine=att.de, decode_address=engines[att.de].data_address,
            layerwise=self.config.layerwise, temperature=s.temperature, top_p=s.top_p,
            seed=s.seed, banned_first_token_ids=list(stop.banned(0)))))

    # ---- engine reports ----------------------------------------------------------------------

    def on_message(self, sender: int, msg: ctl.ToScheduler) -> list[Command]:
        """A report from engine `sender` (the identity its connection proved). A message that
        speaks for another engine is rejected; one about an attempt that is no longer current
        (finished, aborted, re-run) or that names the wrong engine is ignored."""
        if getattr(msg, "engine_id", sender) != sender:
            raise FrameRejected("identity", f"engine {sender} sent a message for engine "
                                            f"{getattr(msg, 'engine_id', None)}")
        if isinstance(msg, ctl.Hello | ctl.EngineStats | ctl.NodeJoin | ctl.NodePing):
            return []  # the shell's business (membership, metrics)
        rec = self._records.get(msg.attempt.request_id)
        att = rec.attempt if rec is not None else None
        if rec is None or att is None or att.id != msg.attempt:
            return []
        out: list[Command] = []
        if isinstance(msg, ctl.Tokens) and sender == att.de:
            if len(rec.generated) + len(msg.token_ids) > rec.stop.max_tokens:
                raise FrameRejected("invalid", f"{att.id}: more tokens than max_tokens")
            rec.generated.extend(msg.token_ids)
            rec.advance(Phase.DECODING)
            out.append(Emit(rec.rid, TokenEvent(rec.rid, tuple(msg.token_ids))))
        elif isinstance(msg, ctl.Finished) and sender == att.de:
            if rec.attempts == 1:  # what was really loaded (a bad block shortens the prefix)
                rec.first_cached_tokens = min(msg.cached_tokens, len(rec.prompt))
            if ChargePart.PREFILL in att.held and self.ledger.alive(att.pe):
                # The DE gave up before the prefill ended (e.g. it refused the request): the
                # PE would otherwise keep the task, maybe waiting forever for the DE's hit KV.
                out.append(Send(att.pe, ctl.Abort(att.id)))
            self._release(att, set(att.held))
            rec.attempt = None  # the DE is done with it: nothing to abort
            self._end(rec, FinishReason(msg.finish_reason), out, error=msg.error)
            out.append(Wake())
        elif isinstance(msg, ctl.PrefillDone) and sender == att.pe:
            self._release(att, {ChargePart.PREFILL})
            rec.advance(Phase.DECODING)
            out.append(Wake())
        elif isinstance(msg, ctl.ReadDone) and sender == att.read_engine:
            self._release(att, {ChargePart.READ})
            rec.advance(Phase.PREFILLING)
            out.append(Wake())
        elif isinstance(msg, ctl.TransferFailed) and sender in (att.pe, att.de):
            self._transfer_failed(rec, msg, out)
        return out

    def _transfer_failed(self, rec: RequestRecord, msg: ctl.TransferFailed,
                         out: list[Command]) -> None:
        rec.transfer_failures += 1
        if not self._drop_attempt(rec, out):
            return
        if rec.transfer_failures >= TRANSFER_FAILURE_LIMIT:
            self._end(rec, FinishReason.ERROR, out, error=(
                f"KV transfer failed {rec.transfer_failures} times; last: engine "
                f"{msg.engine_id} <-> {msg.peer_address}: {msg.error}"))
            return
        rec.phase = Phase.BACKOFF
        out.append(RetryAfter(rec.rid, self.config.transfer_retry_delay_s))

    # ---- transitions -------------------------------------------------------------------------

    def _release(self, att: Attempt, parts: set[ChargePart]) -> None:
        parts = parts & att.held
        if parts:
            att.charge.apply(self.ledger, frozenset(parts), -1)
            att.held -= parts

    def _abort_attempt(self, rec: RequestRecord, out: list[Command]) -> None:
        """Tell the attempt's live engines to drop it, release what it holds."""
        att = rec.attempt
        if att is None:
            return
        for engine_id in dict.fromkeys((att.de, att.pe)):
            if self.ledger.alive(engine_id):
                out.append(Send(engine_id, ctl.Abort(att.id)))
        self._release(att, set(att.held))
        rec.attempt = None

    def _drop_attempt(self, rec: RequestRecord, out: list[Command]) -> bool:
        """End the current attempt; True when the request needs another one (its prompt then
        carries the tokens already streamed), False when it had ended anyway."""
        self._abort_attempt(rec, out)
        reason = rec.stop.finish_reason(rec.generated)
        if reason is not None:  # it had ended on the DE before the DE's Finished came
            self._end(rec, reason, out)
            return False
        rec.prompt = [*rec.request.prompt_token_ids, *rec.generated]
        rec.hashes, rec.cached_tokens = self._lookup(rec.prompt)
        return True

    def _end(self, rec: RequestRecord, reason: FinishReason, out: list[Command],
             error: str | None = None) -> None:
        self._abort_attempt(rec, out)
        if rec in self._waiting:
            self._waiting.remove(rec)
        rec.phase = Phase.FAILED if reason == FinishReason.ERROR else Phase.FINISHED
        self._records.pop(rec.rid, None)
        cached = rec.first_cached_tokens if rec.first_cached_tokens is not None else 0
        out.append(Emit(rec.rid, FinishEvent(rec.rid, reason, len(rec.request.prompt_token_ids),
                                             len(rec.generated), cached, error=error)))

    # ---- integrity ---------------------------------------------------------------------------

    def check_integrity(self) -> None:
        """The ledger holds exactly the parts live attempts still hold (raises otherwise)."""
        expected = Ledger()
        for e in self.ledger.engines.values():
            expected.engines[e.engine_id] = type(e)(e.engine_id, e.node_id, e.role,
                                                    e.data_address, e.kv_capacity_tokens,
                                                    e.prefill_tokens_per_s, e.pid)
        for r in self._records.values():
            if r.attempt is not None:
                r.attempt.charge.apply(expected, frozenset(r.attempt.held))
            if r.phase.placed != (r.attempt is not None) or r.phase.ended:
                raise SchedulingError(f"request {r.rid} is {r.phase} with attempt {r.attempt}")
        for eid, e in self.ledger.engines.items():
            x = expected.engines[eid]
            if (e.seq, e.tok, e.kv_used_tokens) != (x.seq, x.tok, x.kv_used_tokens):
                raise SchedulingError(f"engine {eid}: books say {(e.seq, e.tok, e.kv_used_tokens)}"
                                      f", attempts hold {(x.seq, x.tok, x.kv_used_tokens)}")
        for node, q in self.ledger.read_queue.items():
            if q != expected.read_queue.get(node, 0):
                raise SchedulingError(f"node {node}: read queue {q}, attempts hold "
                                      f"{expected.read_queue.get(node, 0)}")
        waiting = {r.rid for r in self._records.values() if r.phase == Phase.QUEUED}
        if waiting != {r.rid for r in self._waiting}:
            raise SchedulingError("the waiting queue and the QUEUED requests differ")
