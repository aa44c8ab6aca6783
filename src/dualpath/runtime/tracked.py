"""`TrackedRequest`: one client request as the scheduler process tracks it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from dualpath.core.requests import GenerateEvent, GenerateRequest


@dataclass
class TrackedRequest:
    """A request as the scheduler process tracks it (one attempt at a time)."""

    request: GenerateRequest
    prompt: list[int]  # grows on fail-over by the tokens already streamed
    hashes: list[str]
    cached_tokens: int
    events: asyncio.Queue[GenerateEvent] = field(default_factory=asyncio.Queue)
    generated: list[int] = field(default_factory=list)
    attempt_generated: int = 0
    pe: int | None = None  # None once the PE reported PrefillDone
    de: int | None = None
    prefill_engine: int | None = None  # the PE of the current attempt (kept after PrefillDone)
    read_node: int | None = None
    read_tokens: int = 0
    de_kv_tokens: int = 0  # what _dispatch reserved on the DE; _release frees exactly that
    first_cached_tokens: int | None = None
    attempts: int = 0
    transfer_failures: int = 0
    finished: bool = False

    @property
    def rid(self) -> str:
        return self.request.request_id

    @property
    def wire_id(self) -> str:
        """The id the engines know this attempt by. Each attempt gets its own, so messages of
        an aborted attempt can never be taken for the next one's, and an engine that saw the
        abort (and drops that id's stragglers for good) can serve the retry."""
        return f"{self.request.request_id}#{self.attempts}"

    @property
    def remaining_tokens(self) -> int:
        return self.request.sampling.max_tokens - len(self.generated)
