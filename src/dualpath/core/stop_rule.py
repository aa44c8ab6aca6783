"""When a request's generation ends: the one stop rule, and the finish reasons.

The decode engine applies the rule after every sampled token; the scheduler process applies
the same rule when a decode engine dies, to tell an answer that had already ended (its last
streamed token was a stop token) from one that must be resumed. Both read the rule from
the request, never from their own idea of the model's EOS ids: the scheduler process builds
it once per request from the sampling parameters and the tokenizer's EOS ids, and sends it
to the decode engine with the assignment.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Annotated

import msgspec

from dualpath.core.requests import SamplingParams

# Token ids cross process boundaries as uint32 (the block hashes encode them so, too).
TokenId = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
# Far above any context we serve; bounds what a frame may ask an engine to allocate.
MAX_TOKENS_PER_REQUEST = 1 << 24
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_PER_REQUEST)]


class FinishReason(enum.StrEnum):
    """Why a request ended (OpenAI's names where they exist)."""

    STOP = "stop"  # a stop token (EOS or a requested stop token id), or a stop string
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # the client went away or the request was cancelled
    ERROR = "error"  # the cluster could not finish it (message in FinishEvent.error)


class StopRule(msgspec.Struct, frozen=True, array_like=True):
    """max_tokens / min_tokens / stop ids of one generation (or of the rest of it, on a retry).

    stop_token_ids: ids that end the answer once `min_tokens` are out (the requested stop
        token ids, plus the EOS ids unless `ignore_eos`).
    banned_while_short: ids that may not be sampled before `min_tokens` (the EOS ids unless
        `ignore_eos`), as vLLM's min_tokens does.
    """

    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS_PER_REQUEST)]
    min_tokens: Count = 0
    stop_token_ids: tuple[TokenId, ...] = ()
    banned_while_short: tuple[TokenId, ...] = ()

    @classmethod
    def of(cls, sampling: SamplingParams, eos_token_ids: Sequence[int]) -> StopRule:
        eos = () if sampling.ignore_eos else tuple(eos_token_ids)
        stop = tuple(dict.fromkeys((*sampling.stop_token_ids, *eos)))
        return cls(sampling.max_tokens, sampling.min_tokens, stop, eos)

    def banned(self, num_generated: int) -> tuple[int, ...]:
        """Ids the next token may not be, with `num_generated` tokens already out."""
        return self.banned_while_short if num_generated < self.min_tokens else ()

    def finish_reason(self, generated: Sequence[int]) -> FinishReason | None:
        """STOP / LENGTH if `generated` (all tokens so far, the last one just sampled) ends
        the answer, else None."""
        n = len(generated)
        if n and n >= self.min_tokens and generated[-1] in self.stop_token_ids:
            return FinishReason.STOP
        if n >= self.max_tokens:
            return FinishReason.LENGTH
        return None

    def after(self, num_generated: int) -> StopRule:
        """The rule for the rest of the answer once `num_generated` tokens are out (a retry
        continues with the streamed tokens appended to its prompt). Needs
        `num_generated < max_tokens`."""
        return StopRule(self.max_tokens - num_generated,
                        max(0, self.min_tokens - num_generated), self.stop_token_ids,
                        self.banned_while_short)
