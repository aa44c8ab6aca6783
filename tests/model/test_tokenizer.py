"""Tokenizers, chat templates and the incremental detokenizer (no checkpoint files)."""

from __future__ import annotations

import pytest

from dualpath.core.errors import UserInputError
from dualpath.model.chat_template import render_chat
from dualpath.model.detokenizer import IncrementalDetokenizer
from dualpath.model.tokenizer import BPETokenizer, ByteTokenizer


def test_byte_tokenizer_round_trip_and_specials() -> None:
    tok = ByteTokenizer(320)
    text = "héllo <|im_end|> wörld"
    ids = tok.encode(text)
    assert 258 in ids and all(i < 259 for i in ids)
    assert tok.decode(ids) == "héllo  wörld"
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert 258 in tok.eos_token_ids


def test_chat_template_renders_chatml() -> None:
    tok = ByteTokenizer(320)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    no_prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                        add_generation_prompt=False)
    assert not no_prompt.endswith("assistant\n")


def test_chat_template_is_sandboxed() -> None:
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(UserInputError, match=r"unsafe|access"):
        render_chat(evil, [{"role": "user", "content": "x"}])
    with pytest.raises(UserInputError, match="bad role"):
        render_chat("{{ raise_exception('bad role') }}", [{"role": "user", "content": "x"}])
    with pytest.raises(UserInputError, match="role"):
        render_chat("x", [{"content": "x"}])


@pytest.mark.parametrize("text", ["plain ascii", "ünïcödé ✓ 日本語 🎉🎉", "a\nb\tc"])
def test_incremental_detokenizer_byte_level(text: str) -> None:
    tok = ByteTokenizer(320)
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.push(i) for i in tok.encode(text)]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + detok.flush() == text


def _gpt2_fields() -> dict:
    """A minimal GGUF-style GPT-2 tokenizer: bytes as tokens, a few merges, one special."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    tokens = ["<|endoftext|>", *alphabet, "Ġt", "he", "Ġthe", "<|im_end|>"]
    types = [3] + [1] * (len(tokens) - 2) + [3]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": ["Ġ t", "h e", "Ġt he"],
        "tokenizer.ggml.eos_token_id": len(tokens) - 1,
        "tokenizer.ggml.bos_token_id": 0,
    }


def test_bpe_from_gguf_fields() -> None:
    fields = _gpt2_fields()
    tok = BPETokenizer.from_gguf_fields(fields)
    tokens = fields["tokenizer.ggml.tokens"]
    ids = tok.encode("in the 42<|im_end|>")
    pieces = [tokens[i] for i in ids]
    assert "Ġthe" in pieces  # merges applied
    assert pieces[-3:] == ["4", "2", "<|im_end|>"]  # digits split, special parsed
    assert tok.decode(ids) == "in the 42"
    assert tok.eos_token_ids == (len(tokens) - 1,)
    assert tok.bos_token == "<|endoftext|>"
    detok = IncrementalDetokenizer(tok)
    ids = tok.encode("naïve café ✓")
    assert "".join(detok.push(i) for i in ids) + detok.flush() == "naïve café ✓"
