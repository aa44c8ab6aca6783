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
MAX_LOGIT_BIAS = 1024  # entries of logit_bias (each costs the sampler one write per step)
LOGIT_BIAS_MAX = 100.0  # |bias| (OpenAI's range)
MAX_TOP_LOGPROBS = 20  # alternatives per generated token (vLLM's default max_logprobs)
MAX_GRAMMAR_CHARS = 1 << 20  # a guided-decoding grammar (llguidance's JSON/Lark text)
REPETITION_PENALTY_MAX = 1e6


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
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # over prompt + generated tokens (vLLM's rule)
    presence_penalty: float = 0.0  # over generated tokens (OpenAI's rule)
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    logprobs: int | None = None  # None: none; k: the sampled token's logprob + the top k
    grammar: str | None = None  # guided decoding: an llguidance grammar (core.guide)

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
        _check_int("top_k", self.top_k, 0, 2**31 - 1)
        _check_range("min_p", self.min_p, 0.0, 1.0)
        _check_float("repetition_penalty", self.repetition_penalty)
        if not 0.0 < self.repetition_penalty <= REPETITION_PENALTY_MAX:
            raise InvalidFieldError("repetition_penalty", "repetition_penalty must be in "
                                    f"(0, {REPETITION_PENALTY_MAX:g}], got {self.repetition_penalty}")
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise InvalidFieldError("logit_bias", f"at most {MAX_LOGIT_BIAS} logit_bias "
                                    f"entries, got {len(self.logit_bias)}")
        for tok, bias in self.logit_bias:
            _check_int("logit_bias", tok, 0, TOKEN_ID_MAX)
            _check_range("logit_bias", bias, -LOGIT_BIAS_MAX, LOGIT_BIAS_MAX)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, 0, MAX_TOP_LOGPROBS)
        if self.grammar is not None and not 0 < len(self.grammar) <= MAX_GRAMMAR_CHARS:
            raise InvalidFieldError("grammar", f"a grammar has 1 to {MAX_GRAMMAR_CHARS} "
                                    f"characters, got {len(self.grammar)}")

    @property
    def penalized(self) -> bool:
        """True when the sampler needs the token history (a penalty is set)."""
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)


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


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    _check_float(name, value)
    if not lo <= value <= hi:
        raise InvalidFieldError(name, f"{name} must be in [{lo:g}, {hi:g}], got {value}")


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
class TokenLogprob:
    """The log-probability of one generated token and of the `top` most likely alternatives
    ((token id, logprob), best first), from the model's distribution at that step."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """New tokens of a running request (usually one per decode step); `logprobs`, when the
    request asked for them, has one entry per token."""

    request_id: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None


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
