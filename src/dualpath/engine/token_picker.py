"""`TokenPicker`: everything that picks one attempt's tokens, the same in the PE and the DE.

The prefill engine builds one for the first token (`pick` only); the decode engine builds one
per attempt and feeds it every token of the answer (`accept`), the PE's first included. From
the `SamplingSpec` and the attempt's prompt it keeps:

- the penalty history: repetition_penalty looks at prompt + generated tokens (vLLM's rule),
  presence / frequency at generated tokens only (OpenAI's rule). On a retry the prompt's last
  `generated_before` tokens are the answer's own, so they count as generated;
- the grammar (`core.guide.Guide`), resumed over those same tokens on a retry;
- the seeded step: draw k of an answer is step k whichever attempt or process makes it.

Each step: raw logits -> (logprobs of the raw distribution, when asked) -> penalties ->
logit_bias -> grammar mask and banned ids (`sample_token`) -> the draw. Not thread-safe; the
owning engine's loop thread is the only caller.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dualpath.core.guide import Guide, GuideTokenizer
from dualpath.engine.sampler import sample_token
from dualpath.wire.sampling import LOGPROB_FLOOR, SamplingSpec, TokenLogprobs

GuideTokenizerSource = Callable[[], GuideTokenizer]


@dataclass(frozen=True)
class Picked:
    token: int
    logprobs: TokenLogprobs | None  # when the spec asks for logprobs


class TokenPicker:
    """See the module doc. `accept` mutates (history, grammar); `pick` does not."""

    def __init__(self, spec: SamplingSpec, prompt: Sequence[int], vocab_size: int,
                 guides: GuideTokenizerSource | None = None) -> None:
        """GrammarError when the spec's grammar does not compile or the resumed tokens break
        it; `guides` gives the process's shared guide vocabulary (needed with a grammar)."""
        self.spec = spec
        self.vocab_size = vocab_size
        cut = len(prompt) - min(spec.generated_before, len(prompt))
        resumed = list(prompt[cut:])
        self.num_generated = len(resumed)
        self._counts: torch.Tensor | None = None
        self._seen: torch.Tensor | None = None
        if spec.penalized:
            self._counts = torch.zeros(vocab_size, dtype=torch.float64)
            self._seen = torch.zeros(vocab_size, dtype=torch.bool)
            ids = torch.tensor([t for t in prompt if 0 <= t < vocab_size], dtype=torch.long)
            self._seen[ids] = True
            if resumed:
                gen = torch.tensor([t for t in resumed if 0 <= t < vocab_size], dtype=torch.long)
                self._counts += torch.bincount(gen, minlength=vocab_size).to(torch.float64)
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None
        if spec.logit_bias:
            pairs = [(t, b) for t, b in spec.logit_bias if t < vocab_size]
            self._bias = (torch.tensor([t for t, _ in pairs], dtype=torch.long),
                          torch.tensor([b for _, b in pairs], dtype=torch.float64))
        self.guide: Guide | None = None
        if spec.grammar is not None:
            if guides is None:
                raise ValueError("a grammar needs a guide vocabulary")
            self.guide = Guide(guides(), spec.grammar)
            self.guide.accept_all(resumed)

    @property
    def step(self) -> int:
        """The seeded step of the next token (tokens of the answer so far)."""
        return self.num_generated

    @property
    def complete(self) -> bool:
        """The grammar can take no more text: the answer ends here."""
        return self.guide is not None and self.guide.is_stopped

    def pick(self, logits: torch.Tensor, banned: tuple[int, ...] = ()) -> Picked:
        """The next token from `logits` [vocab] (does not advance: call `accept`)."""
        spec = self.spec
        raw = logits.detach().to(torch.float64).flatten()
        processed = self._processed(raw)
        allowed = self._allowed(raw.numel())
        token = sample_token(processed, temperature=spec.temperature, top_p=spec.top_p,
                             seed=spec.seed, step=self.step, banned_token_ids=banned,
                             top_k=spec.top_k, min_p=spec.min_p, allowed=allowed)
        lp = None if spec.logprobs is None else token_logprobs(raw, token, spec.logprobs)
        return Picked(token, lp)

    def accept(self, token: int) -> None:
        """`token` is the answer's next one: record it (GrammarError if the grammar forbids
        it, e.g. a first token from a prefill engine that ignored the grammar)."""
        if self.guide is not None:
            self.guide.accept(token)
        if self._counts is not None and self._seen is not None and 0 <= token < self.vocab_size:
            self._counts[token] += 1
            self._seen[token] = True
        self.num_generated += 1

    def _processed(self, raw: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if self._counts is None and self._bias is None:
            return raw
        x = raw.clone()
        if self._counts is not None and self._seen is not None:
            n = min(x.numel(), self.vocab_size)
            head = x[:n]
            if spec.repetition_penalty != 1.0:
                seen = self._seen[:n]
                p = spec.repetition_penalty
                head[seen] = torch.where(head[seen] > 0, head[seen] / p, head[seen] * p)
            counts = self._counts[:n]
            if spec.frequency_penalty:
                head -= spec.frequency_penalty * counts
            if spec.presence_penalty:
                head -= spec.presence_penalty * (counts > 0).to(torch.float64)
        if self._bias is not None:
            ids, bias = self._bias
            keep = ids < x.numel()
            x.index_add_(0, ids[keep], bias[keep])
        return x

    def _allowed(self, n: int) -> torch.Tensor | None:
        if self.guide is None:
            return None
        bits = np.unpackbits(np.frombuffer(self.guide.allowed_bitmask(), dtype=np.uint8),
                             bitorder="little")
        mask = torch.from_numpy(bits[:n].astype(np.bool_))
        if mask.numel() < n:
            mask = torch.cat((mask, torch.zeros(n - mask.numel(), dtype=torch.bool)))
        return mask


def token_logprobs(raw: torch.Tensor, token: int, top: int) -> TokenLogprobs:
    """The sampled token's logprob and the `top` best, from the model's raw distribution
    (before penalties, temperature and masks, as vLLM reports them by default)."""
    lp = torch.log_softmax(torch.nan_to_num(raw, nan=float("-inf")), dim=-1)

    def clean(v: float) -> float:
        return LOGPROB_FLOOR if not v >= LOGPROB_FLOOR else min(v, 0.0)

    best: list[tuple[int, float]] = []
    if top:
        values, ids = torch.topk(lp, min(top, lp.numel()))
        best = [(int(i), clean(float(v))) for v, i in zip(values.tolist(), ids.tolist(),
                                                           strict=True)]
    return TokenLogprobs(clean(float(lp[token])), best)


class SharedGuideTokenizer:
    """The process's guide vocabulary, built once (about two seconds of CPU for 49k tokens;
    engines `prewarm` it at start) and then shared by every request; thread-safe."""

    def __init__(self, build: Callable[[], GuideTokenizer]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._value: GuideTokenizer | None = None

    def __call__(self) -> GuideTokenizer:
        with self._lock:
            if self._value is None:
                self._value = self._build()
            return self._value

    def prewarm(self) -> None:
        """Start building in a background thread; a call meanwhile waits for it. A failed
        build is left to the first call, which raises it."""

        def build() -> None:
            with contextlib.suppress(Exception):
                self()

        threading.Thread(target=build, name="guide-vocabulary", daemon=True).start()
