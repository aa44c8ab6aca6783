"""A trivial deterministic engine: the server's test double and the front-end benchmark's load.

It honours the engine side of `SamplingParams` exactly like the real engines must (max_tokens,
min_tokens, ignore_eos, stop token ids, seeds) and keeps a real prefix map of the token blocks
of earlier requests (prompt + generated tokens, whole blocks, chained hashes), so
`cached_tokens` of a follow-up turn is what a block-hash KV store would report.

Generated tokens are lowercase letters and spaces (readable, and printable for stop-string
tests). Greedy (temperature 0) output is a function of the prompt alone; sampled output is a
function of (prompt, seed), or of the backend's own seeded generator when `seed` is None.
A request with a grammar gets the same choice where the grammar allows it, else an allowed
token picked the same way (so its output is always in the grammar, through the real
`core.guide`); one with logprobs gets a fixed, well-formed distribution (every alphabet token
equally likely). The other sampling knobs (top_k, penalties, logit_bias) have nothing to act
on in this fake and are ignored here; the real engines apply them.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

from dualpath.core.guide import Guide
from dualpath.core.requests import (
    FinishEvent,
    GenerateEvent,
    GenerateRequest,
    TokenEvent,
    TokenLogprob,
)
from dualpath.server.backend import AdmissionLimits, Backend, BackendMetrics
from dualpath.server.tokenizer import ByteTokenizer, Tokenizer

_ALPHABET: tuple[int, ...] = tuple(b"abcdefghijklmnopqrstuvwxyz ")


@dataclass
class _Running:
    total_tokens: int
    buffer: bytearray  # stands for the request's KV buffer; freed when the request ends
    aborted: bool = False


class EchoBackend(Backend):
    """Deterministic fake engine. `token_delay_s` paces decode steps, `prefill_delay_s` TTFT.

    `eos_after_tokens`: the natural output ends with EOS after that many tokens (None: never).
    `buffer_bytes_per_token` sizes the fake KV buffer each running request holds.
    """

    def __init__(
        self,
        *,
        tokenizer: Tokenizer | None = None,
        model_name: str = "echo",
        max_model_len: int = 4096,
        token_delay_s: float = 0.0,
        prefill_delay_s: float = 0.0,
        eos_after_tokens: int | None = None,
        block_tokens: int = 16,
        buffer_bytes_per_token: int = 64,
        admission: AdmissionLimits | None = None,
        seed: int = 0,
    ) -> None:
        self._tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        self._model_name = model_name
        self._max_model_len = max_model_len
        self.token_delay_s = token_delay_s
        self.prefill_delay_s = prefill_delay_s
        self.eos_after_tokens = eos_after_tokens
        self._block_tokens = block_tokens
        self._buffer_bytes_per_token = buffer_bytes_per_token
        self._admission = admission if admission is not None else AdmissionLimits()
        self._rng = random.Random(seed)
        self._stored_blocks: set[int] = set()
        self._running: dict[str, _Running] = {}
        self._guide_tokenizer: object | None = None
        self._bytes_read = 0
        self.aborted_ids: list[str] = []  # requests that ended by abort or cancellation

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def admission(self) -> AdmissionLimits:
        return self._admission

    async def abort(self, request_id: str) -> None:
        state = self._running.get(request_id)
        if state is not None:
            state.aborted = True

    def metrics_snapshot(self) -> BackendMetrics:
        running = list(self._running.values())
        return BackendMetrics(
            num_running=len(running),
            num_waiting=0,
            bytes_read_total={"pe": self._bytes_read, "de": 0},
            read_queue_tokens={"echo": 0},
            engine_tokens={"echo0": sum(r.total_tokens for r in running)},
            engine_seqs={"echo0": len(running)},
            buffer_bytes_in_use={"echo": sum(len(r.buffer) for r in running)},
        )

    @staticmethod
    def _logprob(token: int, top: int) -> TokenLogprob:
        lp = -math.log(len(_ALPHABET))
        chosen = lp if token in _ALPHABET else -9999.0
        return TokenLogprob(chosen, tuple((t, lp) for t in _ALPHABET[:top]))

    def _block_hashes(self, token_ids: tuple[int, ...]) -> list[int]:
        hashes: list[int] = []
        parent = 0
        b = self._block_tokens
        for start in range(0, len(token_ids) - b + 1, b):
            parent = hash((parent, token_ids[start : start + b]))
            hashes.append(parent)
        return hashes

    def _cached_tokens(self, prompt: tuple[int, ...]) -> int:
        hits = 0
        for h in self._block_hashes(prompt):
            if h not in self._stored_blocks:
                break
            hits += 1
        # At least one prompt token is always computed: its logits give the first output token.
        return min(hits * self._block_tokens, len(prompt) - 1)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateEvent]:
        rid = request.request_id
        prompt = request.prompt_token_ids
        sp = request.sampling
        cached = self._cached_tokens(prompt)
        self._bytes_read += cached * self._buffer_bytes_per_token
        state = _Running(len(prompt), bytearray(len(prompt) * self._buffer_bytes_per_token))
        self._running[rid] = state
        if sp.temperature == 0.0:
            rng = None
            key = hash(prompt)
        else:
            rng = random.Random(hash((sp.seed, prompt))) if sp.seed is not None else self._rng
            key = 0
        eos = self._tokenizer.eos_token_ids[0] if self._tokenizer.eos_token_ids else None
        guide = None
        if sp.grammar is not None:
            if self._guide_tokenizer is None:
                self._guide_tokenizer = self._tokenizer.guide_tokenizer(  # type: ignore[attr-defined]
                    self._tokenizer.vocab_size)
            guide = Guide(self._guide_tokenizer, sp.grammar)  # type: ignore[arg-type]
        stop_ids = set(sp.stop_token_ids)
        out: list[int] = []
        reason = "length"
        completed = False
        try:
            if self.prefill_delay_s > 0:
                await asyncio.sleep(self.prefill_delay_s)
            for i in range(sp.max_tokens):
                if i > 0 and self.token_delay_s > 0:
                    await asyncio.sleep(self.token_delay_s)
                if state.aborted:
                    reason = "abort"
                    break
                natural_eos = (
                    self.eos_after_tokens is not None
                    and not sp.ignore_eos
                    and i >= max(self.eos_after_tokens, sp.min_tokens)
                )
                draw = hash((key, i)) if rng is None else rng.randrange(len(_ALPHABET))
                if natural_eos and eos is not None and guide is None:
                    tok = eos
                else:
                    tok = _ALPHABET[draw % len(_ALPHABET)]
                if guide is not None and not guide.allows(tok):
                    allowed = [t for t in range(guide.vocab_size) if guide.allows(t)]
                    tok = allowed[draw % len(allowed)]
                if guide is not None:
                    guide.accept(tok)
                out.append(tok)
                state.total_tokens += 1
                yield TokenEvent(rid, (tok,), None if sp.logprobs is None
                                 else (self._logprob(tok, sp.logprobs),))
                ended = guide is not None and (guide.is_stopped or tok == eos)
                if (natural_eos and eos is not None and guide is None) or ended or (
                        tok in stop_ids and i + 1 >= sp.min_tokens):
                    reason = "stop"
                    break
            completed = True
            yield FinishEvent(rid, reason, len(prompt), len(out), cached)
        finally:
            if reason == "abort" or not completed:
                self.aborted_ids.append(rid)
            self._stored_blocks.update(self._block_hashes(prompt + tuple(out)))
            del self._running[rid]
