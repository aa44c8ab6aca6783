"""A `RequestBooks` with three fake engines (or four), driven by hand: commands are recorded
instead of carried out, so every path of a request's life is exercised deterministically."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dualpath.core.requests import FinishEvent, GenerateEvent, GenerateRequest, SamplingParams
from dualpath.core.systems import system_spec
from dualpath.runtime.books import (
    BooksConfig,
    Command,
    Emit,
    RequestBooks,
    RetryAfter,
    Send,
    Wake,
)
from dualpath.scheduler import GlobalScheduler, beta_tokens, scheduler_config_for_system
from dualpath.wire import control as ctl

PE, DE1, DE2, PE2 = 0, 1, 2, 3
EOS = 2
KV_CAPACITY_TOKENS = 64 * 64
HIT = "ab" * 32  # every prompt "hits" one stored block, so read queues are exercised too


class Books:
    def __init__(self, *, second_pe: bool = False, hit: bool = True) -> None:
        self.books = RequestBooks(
            BooksConfig(block_size=64, layerwise=True, eos_token_ids=(EOS,),
                        transfer_retry_delay_s=0.0),
            lambda prompt: ([HIT], 64) if hit else ([], 0))
        self.sent: list[tuple[int, Any]] = []
        self.events: dict[str, list[GenerateEvent]] = {}
        self.retries: list[tuple[str, float]] = []
        self.wakes = 0
        roles = [(PE, "prefill"), (DE1, "decode"), (DE2, "decode")]
        for engine_id, role in roles + ([(PE2, "prefill")] if second_pe else []):
            self.run(self.books.engine_joined(ctl.Hello(
                engine_id=engine_id, node_id=engine_id, role=role,  # type: ignore[arg-type]
                data_address=f"tcp://addr{engine_id}:1",
                kv_capacity_tokens=KV_CAPACITY_TOKENS if role == "decode" else 0, pid=1,
                prefill_tokens_per_s=1000.0 if role == "prefill" else 0.0)))
        self.scheduler = GlobalScheduler(scheduler_config_for_system(
            system_spec("dualpath"), beta_tokens=beta_tokens(1000.0)))

    def run(self, commands: list[Command]) -> list[Command]:
        for c in commands:
            if isinstance(c, Send):
                self.sent.append((c.engine_id, c.message))
            elif isinstance(c, Emit):
                self.events.setdefault(c.request_id, []).append(c.event)
            elif isinstance(c, RetryAfter):
                self.retries.append((c.request_id, c.delay_s))
            elif isinstance(c, Wake):
                self.wakes += 1
        return commands

    def submit(self, rid: str, max_tokens: int = 4, prompt_len: int = 100,
               **sampling: Any) -> None:
        params = SamplingParams(max_tokens=max_tokens, **({"ignore_eos": True} | sampling))
        self.run(self.books.submit(GenerateRequest(rid, tuple(range(prompt_len)), params)))

    def schedule(self) -> None:
        self.run(self.books.schedule(self.scheduler))

    def report(self, sender: int, msg: ctl.ToScheduler) -> list[Command]:
        return self.run(self.books.on_message(sender, msg))

    def assigned(self, rid: str) -> ctl.AssignPrefill:
        """The latest AssignPrefill sent for request `rid` (any attempt)."""
        return [m for _, m in self.sent
                if isinstance(m, ctl.AssignPrefill) and m.attempt.request_id == rid][-1]

    def pe_of(self, a: ctl.AssignPrefill) -> int:
        return next(e for e, m in self.sent if m is a)

    def finish(self, rid: str) -> FinishEvent:
        last = self.events[rid][-1]
        assert isinstance(last, FinishEvent), self.events[rid]
        return last

    def tokens(self, rid: str) -> list[int]:
        return [t for e in self.events.get(rid, []) if not isinstance(e, FinishEvent)
                for t in e.token_ids]

    def complete(self, rid: str, tokens: Sequence[int] = (1, 2, 3, 4)) -> None:
        """The engines of `rid`'s current attempt report a whole normal run."""
        a = self.assigned(rid)
        read_engine = self.pe_of(a) if a.read_path == "pe" else a.decode_engine
        self.report(read_engine, ctl.ReadDone(read_engine, a.attempt, 64, 64))
        self.report(self.pe_of(a), ctl.PrefillDone(self.pe_of(a), a.attempt, 64))
        self.report(a.decode_engine, ctl.Tokens(a.decode_engine, a.attempt, list(tokens)))
        self.report(a.decode_engine, ctl.Finished(a.decode_engine, a.attempt, "length",  # type: ignore[arg-type]
                                                  len(a.prompt_token_ids), len(tokens), 64))

    def assert_idle(self) -> None:
        ledger = self.books.ledger
        assert ledger.idle(), (ledger.engines, ledger.read_queue)
        assert self.books.num_live == 0 and self.books.waiting_ids() == []
        self.books.check_integrity()
