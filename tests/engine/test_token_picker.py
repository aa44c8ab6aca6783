"""TokenPicker: each sampling knob changes the pick the way its definition says, the grammar
masks every step and resumes over a retry's tokens, and logprobs come from the raw logits."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dualpath.core.errors import GrammarError
from dualpath.core.guide import grammar_from_json_schema
from dualpath.engine.token_picker import TokenPicker
from dualpath.server.tokenizer import ByteTokenizer
from dualpath.wire.sampling import SamplingSpec

VOCAB = 16


def logits(*values: float) -> torch.Tensor:
    x = torch.full((VOCAB,), -10.0)
    x[: len(values)] = torch.tensor(values)
    return x


def pick(spec: SamplingSpec, x: torch.Tensor, prompt: tuple[int, ...] = (9,)) -> int:
    return TokenPicker(spec, prompt, VOCAB).pick(x).token


def test_greedy_takes_the_argmax_and_logit_bias_moves_it() -> None:
    x = logits(1.0, 3.0, 2.0)
    assert pick(SamplingSpec(temperature=0), x) == 1
    assert pick(SamplingSpec(temperature=0, logit_bias=[(2, 5.0)]), x) == 2
    assert pick(SamplingSpec(temperature=0, logit_bias=[(1, -100.0)]), x) == 2


def test_repetition_penalty_counts_the_prompt_presence_and_frequency_do_not() -> None:
    x = logits(2.0, 2.5)
    assert pick(SamplingSpec(temperature=0, repetition_penalty=2.0), x, prompt=(1,)) == 0
    # presence / frequency look at generated tokens only: the prompt's 1 is not penalized
    assert pick(SamplingSpec(temperature=0, presence_penalty=2.0), x, prompt=(1,)) == 1
    p = TokenPicker(SamplingSpec(temperature=0, presence_penalty=1.0), (5,), VOCAB)
    p.accept(1)
    assert p.pick(x).token == 0
    f = TokenPicker(SamplingSpec(temperature=0, frequency_penalty=0.3), (5,), VOCAB)
    f.accept(1)
    assert f.pick(x).token == 1  # 2.5 - 0.3 > 2.0
    f.accept(1)
    assert f.pick(x).token == 0  # 2.5 - 0.6 < 2.0


def test_a_retry_counts_its_earlier_tokens_as_generated() -> None:
    x = logits(2.0, 2.5)
    fresh = TokenPicker(SamplingSpec(temperature=0, presence_penalty=1.0), (5, 1), VOCAB)
    retry = TokenPicker(SamplingSpec(temperature=0, presence_penalty=1.0, generated_before=1),
                        (5, 1), VOCAB)
    assert (fresh.pick(x).token, retry.pick(x).token) == (1, 0)
    assert retry.step == 1  # the seeded step continues where the first attempt was


@pytest.mark.parametrize("seed", range(20))
def test_top_k_and_min_p_keep_only_their_tokens(seed: int) -> None:
    x = logits(5.0, 4.9, 4.8, 0.0, 0.0, 0.0)
    assert pick(SamplingSpec(temperature=1.0, seed=seed, top_k=2), x) in (0, 1)
    # min_p 0.5: tokens at least half as likely as the best (e^-0.2 ≈ 0.82 passes, e^-5 fails)
    assert pick(SamplingSpec(temperature=1.0, seed=seed, min_p=0.5), x) in (0, 1, 2)


def test_logprobs_are_of_the_raw_distribution() -> None:
    x = logits(1.0, 3.0, 2.0)
    got = TokenPicker(SamplingSpec(temperature=0, logprobs=2, logit_bias=[(2, 50.0)]), (9,),
                      VOCAB).pick(x)
    want = torch.log_softmax(x.double(), -1)
    assert got.token == 2 and got.logprobs is not None
    assert math.isclose(got.logprobs.logprob, float(want[2]), rel_tol=1e-9)
    assert [t for t, _ in got.logprobs.top] == [1, 2]  # not moved by the bias


def _byte_picker(grammar: str, prompt: tuple[int, ...] = (1,), before: int = 0) -> TokenPicker:
    tok = ByteTokenizer()
    spec = SamplingSpec(temperature=1.0, seed=3, grammar=grammar, generated_before=before)
    return TokenPicker(spec, prompt, tok.vocab_size, lambda: tok.guide_tokenizer(tok.vocab_size))


def test_the_grammar_masks_every_step_until_complete() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    picker = _byte_picker(grammar_from_json_schema(schema))
    gen = torch.Generator().manual_seed(0)
    out = []
    while not picker.complete and len(out) < 64:
        tok = picker.pick(torch.randn(ByteTokenizer().vocab_size, generator=gen)).token
        picker.accept(tok)
        out.append(tok)
    assert picker.complete
    assert json.loads(bytes(out)) in ({"ok": True}, {"ok": False})


def test_the_grammar_resumes_over_a_retrys_tokens_and_refuses_a_bad_one() -> None:
    grammar = grammar_from_json_schema({"enum": ["yes", "no"]})
    done = b'"ye'
    picker = _byte_picker(grammar, prompt=(1, *done), before=len(done))
    x = torch.zeros(ByteTokenizer().vocab_size)
    assert picker.pick(x).token == ord("s")
    with pytest.raises(GrammarError):
        picker.accept(ord("x"))
    with pytest.raises(GrammarError):
        _byte_picker(grammar, prompt=(1, *b'"x'), before=2)
