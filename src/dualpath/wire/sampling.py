"""How engines pick a request's tokens (`SamplingSpec`), and what they report per token
(`TokenLogprobs`): bounded structs carried by AssignPrefill / AssignDecode, PrefillResult and
Tokens.

The prefill engine samples the first token and the decode engine the rest, from the same
spec, so both processes must read it the same way: the spec is built once by the scheduler
process (`SamplingSpec.of`) and sent to both. `generated_before` says how many trailing prompt
tokens are the answer's own (a retry resumes with the streamed tokens appended to its prompt):
they count as generated for the penalties, the seeded draws continue at step
`generated_before`, and the grammar is resumed over them.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from dualpath.core.requests import (
    LOGIT_BIAS_MAX,
    MAX_GRAMMAR_CHARS,
    MAX_LOGIT_BIAS,
    MAX_TOP_LOGPROBS,
    REPETITION_PENALTY_MAX,
    SamplingParams,
    TokenLogprob,
)
from dualpath.core.stop_rule import Count, TokenId
from dualpath.wire.types import Seed, Temperature, TopP, check_seed

Penalty = Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)]
Bias = Annotated[float, msgspec.Meta(ge=-LOGIT_BIAS_MAX, le=LOGIT_BIAS_MAX)]
# -inf (a token the model rules out) travels as this floor, as vLLM reports it.
LOGPROB_FLOOR = -9999.0
Logprob = Annotated[float, msgspec.Meta(ge=LOGPROB_FLOOR, le=0.0)]
TopCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOP_LOGPROBS)]


class SamplingSpec(msgspec.Struct, frozen=True, array_like=True):
    """Everything an engine needs to pick one request's tokens (see the module doc)."""

    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    seed: Seed | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] = 0
    min_p: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    repetition_penalty: Annotated[float, msgspec.Meta(gt=0.0, le=REPETITION_PENALTY_MAX)] = 1.0
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: Annotated[list[tuple[TokenId, Bias]],
                          msgspec.Meta(max_length=MAX_LOGIT_BIAS)] = msgspec.field(
                              default_factory=list)
    logprobs: TopCount | None = None
    grammar: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_GRAMMAR_CHARS)] | None = None
    generated_before: Count = 0

    def __post_init__(self) -> None:
        check_seed(self.seed)

    @classmethod
    def of(cls, s: SamplingParams, generated_before: int = 0) -> SamplingSpec:
        # A negative seed (the API takes any int64) travels as its two's complement uint64.
        seed = None if s.seed is None else s.seed % (1 << 64)
        return cls(s.temperature, s.top_p, seed, s.top_k, s.min_p, s.repetition_penalty,
                   s.presence_penalty, s.frequency_penalty, [(t, b) for t, b in s.logit_bias],
                   s.logprobs, s.grammar, generated_before)

    @property
    def penalized(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)


class TokenLogprobs(msgspec.Struct, frozen=True, array_like=True):
    """One generated token's logprob and the top alternatives ((id, logprob), best first)."""

    logprob: Logprob
    top: Annotated[list[tuple[TokenId, Logprob]],
                   msgspec.Meta(max_length=MAX_TOP_LOGPROBS)] = msgspec.field(default_factory=list)

    def to_core(self) -> TokenLogprob:
        return TokenLogprob(self.logprob, tuple((t, lp) for t, lp in self.top))
