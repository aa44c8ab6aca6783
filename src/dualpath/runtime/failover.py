"""Fail-over of the scheduler process (a mixin of `LocalCluster`).

An engine that exits is detected within `SUPERVISE_INTERVAL_S`; every request it was part of
is re-queued with its prompt extended by the tokens already streamed (so the client sees one
uninterrupted answer; exact for greedy decoding). An engine that could not move a request's KV
to or from its live peer reports TransferFailed: the attempt is dropped and the request re-run
the same way after a short pause, at most `TRANSFER_FAILURE_LIMIT` times, then ended with an
error.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from dualpath.engine.kv_messages import PEER_FAILED_FOR_S
from dualpath.runtime import protocol as proto
from dualpath.runtime.tracked import TrackedRequest

logger = logging.getLogger(__name__)

SUPERVISE_INTERVAL_S = 0.25
# The third failed transfer of one request ends it with an error (a pair that keeps failing
# must not retry forever); a dead engine is the supervisor's business and never counts here.
TRANSFER_FAILURE_LIMIT = 3
# A transfer retry waits until the engines' fast-fail window for the peer has passed, so the
# next attempt really tries the peer again (and a dead peer has been noticed meanwhile).
TRANSFER_RETRY_DELAY_S = PEER_FAILED_FOR_S + 0.5


class FailoverMixin:
    """Needs from the host: state, _procs, _run_dir, _requests, _waiting, _wake, _tokenizer,
    transfer_retry_delay_s, _attempt, _cancel, _finish, _lookup."""

    async def _supervise_loop(self: Any) -> None:
        assert self._procs is not None
        while True:
            await asyncio.sleep(SUPERVISE_INTERVAL_S)
            for engine_id in self._procs.poll_dead():
                self._engine_died(engine_id)

    def _engine_died(self: Any, engine_id: int) -> None:
        log = os.path.join(self._run_dir, f"engine-{engine_id}.log")
        logger.error("engine %d died; re-running its requests elsewhere. Log tail:\n%s",
                     engine_id, log_tail(log, 15))
        self.state.mark_dead(engine_id)
        # A PE reports PrefillDone as soon as its KV is queued to the DE; until the DE's first
        # token arrives, the KV may have died with the PE and the DE would wait forever.
        affected = [r for r in self._requests.values() if engine_id in (r.pe, r.de) or (
            r.de is not None and r.prefill_engine == engine_id
            and len(r.generated) == r.attempt_generated)]
        requeued = [req for req in affected if self._drop_attempt(req)]
        self._waiting[:0] = requeued  # ahead of newer requests, in their arrival order
        if not self.state.has_role("prefill") or not self.state.has_role("decode"):
            for req in list(self._requests.values()):
                self._cancel(req)
                self._finish(req, "error", error="no live prefill or decode engine left")
        self._wake.set()

    def _drop_attempt(self: Any, req: TrackedRequest) -> bool:
        """Cancel the current attempt; True when the request needs another one (its prompt
        then carries the tokens already streamed), False when it was finished here."""
        self._cancel(req)
        if self._stopped(req):  # the DE died between its last token and Finished
            self._finish(req, "stop")
            return False
        if req.remaining_tokens <= 0:
            self._finish(req, "length")
            return False
        # Resume: the streamed tokens become part of the prompt of the next attempt.
        req.prompt = [*req.request.prompt_token_ids, *req.generated]
        req.hashes, req.cached_tokens = self._lookup(req.prompt)
        return True

    def _transfer_failed(self: Any, msg: proto.TransferFailed) -> None:
        """An engine lost a live attempt's KV path to its peer: re-run the request (after the
        fast-fail window), or end it once it has failed `TRANSFER_FAILURE_LIMIT` times. Reports
        about attempts already gone (finished, aborted, re-run after an engine death) are
        ignored."""
        req = self._attempt(msg.request_id)
        if req is None or req.de is None or msg.engine_id not in (req.prefill_engine, req.de):
            return
        req.transfer_failures += 1
        logger.warning("request %s: engine %d's transfer with %s failed (%d of %d): %s",
                       msg.request_id, msg.engine_id, msg.peer_address, req.transfer_failures,
                       TRANSFER_FAILURE_LIMIT, msg.error)
        if not self._drop_attempt(req):
            return
        if req.transfer_failures >= TRANSFER_FAILURE_LIMIT:
            self._finish(req, "error", error=(
                f"KV transfer failed {req.transfer_failures} times; last: engine "
                f"{msg.engine_id} <-> {msg.peer_address}: {msg.error}"))
            return

        def retry() -> None:
            if not req.finished and req not in self._waiting:
                self._waiting.insert(0, req)
                self._wake.set()

        asyncio.get_running_loop().call_later(self.transfer_retry_delay_s, retry)

    def _stopped(self: Any, req: TrackedRequest) -> bool:
        """Whether the last streamed token ended the request on the DE (stop rule of decode.py)."""
        s = req.request.sampling
        stop = set(s.stop_token_ids) | (set() if s.ignore_eos else
                                        set(self._tokenizer.eos_token_ids))
        return (bool(req.generated) and len(req.generated) >= s.min_tokens
                and req.generated[-1] in stop)


def log_tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"
