"""What crosses the boundary between the HTTP front-end and the serving runtime.

The server turns an OpenAI request into a `GenerateRequest` (token ids + `SamplingParams`) and
consumes a stream of `GenerateEvent`s from a backend (the local cluster, or a trivial engine in
tests). Stop *strings* are the server's business (it detokenizes); stop token ids and lengths
are enforced by the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dualpath.core.errors import InvalidFieldError

# Bounds every component can rely on: seeds and token ids cross process boundaries as
# msgpack integers (at most 64 bits), and lengths as signed 32-bit counts.
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1
MAX_TOKENS_LIMIT = 2**31 - 1
MAX_STOP_TOKEN_IDS = 256
TOKEN_ID_MAX = 2**32 - 1


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature 0 = greedy. `seed` makes sampling reproducible.

    Every field is range-checked here (InvalidFieldError naming the field), so a value that
    reached an engine is one it can encode and sample with: finite temperature in [0, 2],
    top_p in (0, 1], a seed within 64 bits, token ids within 32 bits.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_int("max_tokens", self.max_tokens, 1, MAX_TOKENS_LIMIT)
        _check_int("min_tokens", self.min_tokens, 0, self.max_tokens,
                   f"[0, max_tokens={self.max_tokens}]")
        _check_float("temperature", self.temperature)
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidFieldError("temperature",
                                    f"temperature must be in [0, 2], got {self.temperature}")
        _check_float("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidFieldError("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None:
            _check_int("seed", self.seed, SEED_MIN, SEED_MAX, "[-2**63, 2**64 - 1]")
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise InvalidFieldError("stop_token_ids", f"at most {MAX_STOP_TOKEN_IDS} "
                                    f"stop_token_ids, got {len(self.stop_token_ids)}")
        for tok in self.stop_token_ids:
            _check_int("stop_token_ids", tok, 0, TOKEN_ID_MAX)


def _check_int(name: str, value: object, lo: int, hi: int, shown: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidFieldError(name, f"{name} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        where = shown or f"[{lo}, {hi}]"
        raise InvalidFieldError(name, f"{name} must be in {where}, got {_short(value)}")


def _check_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFieldError(name, f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise InvalidFieldError(name, f"{name} must be a finite number, got {value}")


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}...({len(text)} digits)"


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
