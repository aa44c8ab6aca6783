"""One admitted request's trip through the backend: token events in, text deltas out.

`Generation.deltas()` drives `Backend.generate`, detokenizes incrementally, applies stop
strings (aborting the backend request on a match, then reading on until its FinishEvent for the
usage numbers), records the request's latency metrics, and, whatever way it ends (normal end,
stop string, cancellation because the client went away), aborts and closes the backend stream.
After the iterator ends, `outcome` says how the request finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import anyio

from dualpath.core.requests import FinishEvent, GenerateRequest, TokenEvent, TokenLogprob
from dualpath.server.backend import Backend
from dualpath.server.detokenizer import IncrementalDetokenizer, StopStringMatcher
from dualpath.server.metrics import ServerMetrics

logger = logging.getLogger(__name__)

# How long to wait for the backend's FinishEvent after aborting a request whose stop string
# matched; a backend that never answers must not hold the HTTP request forever.
_ABORT_DRAIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Delta:
    """New output of one request: text (may be empty while held back), the token ids and,
    when the request asked for them, one logprob entry per token."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class Outcome:
    finish_reason: str  # "stop" | "length" | "abort" | "error"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    error: str | None = None


class Generation:
    """Drives one request. Create, iterate `deltas()` once, then read `outcome`."""

    def __init__(self, backend: Backend, request: GenerateRequest, stop: Sequence[str],
                 metrics: ServerMetrics, arrival_s: float) -> None:
        self._backend = backend
        self._request = request
        self._stop = stop
        self._metrics = metrics
        self._arrival_s = arrival_s
        self.outcome: Outcome | None = None

    async def deltas(self) -> AsyncIterator[Delta]:
        req = self._request
        rid = req.request_id
        metrics = self._metrics
        detok = IncrementalDetokenizer(self._backend.tokenizer, req.prompt_token_ids)
        matcher = StopStringMatcher(self._stop)
        events = self._backend.generate(req)
        finish: FinishEvent | None = None
        first_s: float | None = None
        last_s = 0.0
        n_tokens = 0
        error: str | None = None
        try:
            async for ev in events:
                if isinstance(ev, TokenEvent):
                    now = time.perf_counter()
                    k = len(ev.token_ids)
                    if first_s is None:
                        first_s = last_s = now
                        metrics.ttft_s.observe(now - self._arrival_s)
                        k -= 1
                    if k > 0:  # tokens that arrive together share the gap since the last ones
                        gap = (now - last_s) / k
                        for _ in range(k):
                            metrics.itl_s.observe(gap)
                    last_s = now
                    n_tokens += len(ev.token_ids)
                    text = matcher.push(detok.push(ev.token_ids))
                    if matcher.stopped:
                        await self._backend.abort(rid)
                        yield Delta(text, ev.token_ids, ev.logprobs)
                        finish = await self._drain_after_abort(events)
                        break
                    yield Delta(text, ev.token_ids, ev.logprobs)
                else:
                    finish = ev
                    break
            if finish is not None and not matcher.stopped:
                tail = matcher.push(detok.flush(), final=True)
                if tail:
                    yield Delta(tail, ())
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.exception("backend failed on request %s", rid)
            raise
        finally:
            aclose = getattr(events, "aclose", None)
            if finish is None:
                # Cancelled (client gone) or the backend misbehaved: shield the clean-up from
                # the cancellation that is unwinding this task.
                with anyio.CancelScope(shield=True):
                    await self._backend.abort(rid)
                    if aclose is not None:
                        await aclose()
            elif aclose is not None:
                await aclose()
            self._finish(finish, n_tokens, matcher.stopped, first_s, error)

    async def _drain_after_abort(self, events: AsyncIterator[object]) -> FinishEvent | None:
        try:
            async with asyncio.timeout(_ABORT_DRAIN_TIMEOUT_S):
                async for ev in events:
                    if isinstance(ev, FinishEvent):
                        return ev
        except TimeoutError:
            logger.warning("backend sent no FinishEvent within %.0f s of abort(%s)",
                           _ABORT_DRAIN_TIMEOUT_S, self._request.request_id)
        return None

    def _finish(self, finish: FinishEvent | None, n_tokens: int, stopped: bool,
                first_s: float | None, error: str | None) -> None:
        prompt_tokens = len(self._request.prompt_token_ids)
        if error is not None:
            outcome = Outcome("error", prompt_tokens, n_tokens, 0, error)
        elif stopped:
            cached = finish.cached_tokens if finish is not None else 0
            outcome = Outcome("stop", prompt_tokens, n_tokens, cached)
        elif finish is None:
            outcome = Outcome("abort", prompt_tokens, n_tokens, 0)
        else:
            outcome = Outcome(finish.finish_reason, finish.prompt_tokens,
                              finish.completion_tokens, finish.cached_tokens, finish.error)
        self.outcome = outcome
        end_s = time.perf_counter()
        self._metrics.record_finish(
            finish_reason=outcome.finish_reason, prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens, cached_tokens=outcome.cached_tokens,
            ttft_s=None if first_s is None else first_s - self._arrival_s,
            e2e_s=end_s - self._arrival_s,
        )
