"""What crosses the boundary between the HTTP front-end and the serving runtime.

The server turns an OpenAI request into a `GenerateRequest` (token ids + `SamplingParams`) and
consumes a stream of `GenerateEvent`s from a backend (the local cluster, or a trivial engine in
tests). Stop *strings* are the server's business (it detokenizes); stop token ids and lengths
are enforced by the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dualpath.core.errors import UserInputError


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature 0 = greedy. `seed` makes sampling reproducible."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise UserInputError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise UserInputError(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"
            )
        if not 0.0 <= self.temperature <= 2.0:
            raise UserInputError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserInputError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class GenerateRequest:
    """One generation: a prompt as token ids and how to sample its continuation."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    arrival_s: float = 0.0


@dataclass(frozen=True)
class TokenEvent:
    """New tokens of a running request (usually one per decode step)."""

    request_id: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class FinishEvent:
    """The request ended. finish_reason: "stop" (EOS / stop token), "length", "abort", "error".

    cached_tokens: prompt tokens whose KV came from the KV store instead of being computed.
    """

    request_id: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    error: str | None = None


GenerateEvent = TokenEvent | FinishEvent
