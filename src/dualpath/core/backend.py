"""The interface between the HTTP server and whatever generates tokens (lives in core/ so
that runtime/ implements it without importing server/, keeping the dependency arrows).

The server owns HTTP, auth, admission, detokenization, stop strings and metrics; a `Backend`
owns tokens. Two implementations: the local DualPath cluster (`dualpath.runtime`) and
`EchoBackend` (a trivial deterministic engine for tests and the front-end benchmark).

Request lifecycle, seen from the backend::

    generate(req) --> TokenEvent* --> FinishEvent          (normal end: "stop" / "length")
         |
         +-- abort(req.request_id) while consumed --> ... FinishEvent("abort") soon after
         +-- iterator closed / task cancelled (client gone) --> backend frees the request

The server calls `abort` and then keeps reading until the FinishEvent when it stops a request
itself (a stop string matched), because it still needs `cached_tokens` for `usage`. When the
client disconnects, the server calls `abort` and closes the iterator without reading further.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from dualpath.core.errors import UserInputError
from dualpath.core.requests import GenerateEvent, GenerateRequest


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids for one model."""

    @property
    def vocab_size(self) -> int:
        """Token ids are in [0, vocab_size); the server rejects prompts with ids outside it."""
        ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Ids that end generation (unless ignore_eos)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as a prompt continuation (no BOS added)."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of `token_ids`, special tokens skipped."""
        ...

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> str | Sequence[int]:
        """Render a chat (`{"role", "content"}` dicts) as prompt text or prompt token ids."""
        ...


@dataclass(frozen=True)
class AdmissionLimits:
    """How many requests the server hands to the backend at once, and how many may wait.

    A request that finds `max_running` requests in the backend waits in the server's FIFO
    queue; one that finds `max_waiting` requests already waiting is refused with 429 +
    Retry-After. The two bounds are separate: at most max_running + max_waiting requests are
    in the server at any time (like vLLM's `--max-num-seqs` for the first).
    """

    max_running: int = 256
    max_waiting: int = 1024
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if self.max_running < 1 or self.max_waiting < 0 or self.retry_after_s < 0:
            raise UserInputError(
                "admission limits need max_running >= 1, max_waiting >= 0, retry_after_s >= 0; "
                f"got {self.max_running}, {self.max_waiting}, {self.retry_after_s}")


@dataclass(frozen=True)
class Readiness:
    """Whether the backend can take requests now, and if not, why (shown in /ready's 503)."""

    ready: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackendMetrics:
    """A point-in-time snapshot of backend state for /metrics. Every field is optional.

    Label keys are the backend's own names (node "pe0", engine "de1.2", NIC "pe0/snic").
    Counters (`*_total`) are cumulative since the backend started. /metrics shows exactly the
    labels of the latest snapshot: an engine or node left out of it (dead, removed) disappears
    from the scrape at once.
    """

    num_running: int | None = None  # requests being prefilled or decoded
    num_waiting: int | None = None  # requests queued inside the backend's scheduler
    bytes_read_total: Mapping[str, int] = field(default_factory=dict)  # read path {pe,de} -> bytes
    nic_utilization: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (nic, class) -> 0..1
    read_queue_tokens: Mapping[str, int] = field(default_factory=dict)  # node -> tokens queued
    engine_tokens: Mapping[str, int] = field(default_factory=dict)  # engine -> tok_e
    engine_seqs: Mapping[str, int] = field(default_factory=dict)  # engine -> seq_e
    buffer_bytes_in_use: Mapping[str, int] = field(default_factory=dict)  # node -> bytes
    kv_store_bytes: int | None = None  # bytes persisted in the KV store
    # internal-plane frames dropped by a validating decoder, by reason (cumulative)
    internal_frames_rejected: Mapping[str, int] = field(default_factory=dict)
    kv_store_evictions_total: int | None = None  # blocks evicted by the store's capacity bound
    engine_restarts_total: int | None = None  # engine processes restarted after dying


class Backend(abc.ABC):
    """Generates tokens for `GenerateRequest`s. Called by the server's request handlers."""

    @property
    @abc.abstractmethod
    def model_name(self) -> str:
        """The model id shown in /v1/models and in every response."""

    @property
    @abc.abstractmethod
    def max_model_len(self) -> int:
        """Context length: prompt tokens + max_tokens may not exceed it (else HTTP 400)."""

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer; the server tokenizes prompts and detokenizes outputs."""

    @abc.abstractmethod
    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateEvent]:
        """Stream the request's events; the last one is always a `FinishEvent`.

        Implemented as an async generator. The prompt is already validated (non-empty, ids in
        the vocabulary, fits the context). Cancellation (the consuming task is cancelled or
        the iterator closed) must free everything the request holds.
        """

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request early (unknown / finished ids are ignored). Called by the server."""

    def metrics_snapshot(self) -> BackendMetrics:
        """Current DualPath gauges and counters; called on every /metrics scrape."""
        return BackendMetrics()

    @property
    def admission(self) -> AdmissionLimits:
        """Default admission limits; `create_app(max_queue=...)` overrides `max_waiting`."""
        return AdmissionLimits()

    def is_ready(self) -> bool:
        """True once the backend can serve (engines up). The default of `readiness()`."""
        return True

    def readiness(self) -> Readiness:
        """Whether the backend can take requests now; GET /ready answers 503 with the reasons
        while not. Called on every /ready probe (keep it cheap, never block). The default
        asks `is_ready()`; a cluster overrides it (scheduler loop ticking, at least one
        prefill and one decode engine heard from recently)."""
        if self.is_ready():
            return Readiness(True)
        return Readiness(False, ("backend not ready",))

    async def start(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Called once by the app's lifespan before the first request."""

    async def shutdown(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Called once by the app's lifespan after the last request (stop engine processes)."""
