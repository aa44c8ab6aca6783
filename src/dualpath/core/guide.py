"""Guided decoding: grammars and one request's position in its grammar, over llguidance.

Why llguidance (and not xgrammar): docs/decisions/guided-decoding-engine.md. A grammar travels
as llguidance's own grammar text (what `grammar_from_json_schema` / `grammar_from_lark` return),
built once by the server and compiled by each engine that needs it: the prefill engine for the
first token's mask, the decode engine for the rest. `Guide` wraps one `LLMatcher`: ask for the
allowed tokens (`allowed_bitmask`), then `accept` the token that was sampled. Nothing here
imports torch: the engines turn the bitmask into a tensor mask, the echo backend reads bits.

llguidance bounds the work of every grammar (its parser limits: grammar size, lexer states,
fuel per token), so a hostile grammar fails with an error instead of stalling an engine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dualpath.core.errors import GrammarError

# JSON inside every grammar we build: one space after ',' and ':' and no other whitespace, so
# a model cannot spend its tokens on whitespace (and a random-weight model terminates).
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ",
                                "key_separator": ": "}


def _ll() -> Any:
    import llguidance  # ~0.1 s; only processes that guide decoding pay it

    return llguidance


def grammar_from_json_schema(schema: dict[str, Any]) -> str:
    """An llguidance grammar for JSON matching `schema`; GrammarError when it is not one."""
    ll = _ll()
    try:
        grammar = ll.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults=JSON_OPTIONS)
    except (ValueError, TypeError) as exc:
        raise GrammarError(f"invalid JSON schema: {exc}") from exc
    _check(grammar)
    return str(grammar)


def grammar_from_lark(lark: str) -> str:
    """An llguidance grammar from Lark text (which may embed `%json {schema}`)."""
    grammar = str(_ll().LLMatcher.grammar_from_lark(lark))
    _check(grammar)
    return grammar


def lark_json(schema: dict[str, Any]) -> str:
    """`schema` as a Lark `%json` item with our JSON options."""
    return "%json " + json.dumps({**schema, "x-guidance": JSON_OPTIONS})


def _check(grammar: str) -> None:
    error = _ll().LLMatcher.validate_grammar(grammar)
    if error:
        raise GrammarError(f"invalid grammar: {error}")


class GuideTokenizer:
    """The vocabulary as llguidance sees it (token id -> bytes). Building it for a 49k-token
    BPE vocabulary takes about a second: build one per process and share it."""

    def __init__(self, inner: Any, vocab_size: int) -> None:
        self.inner = inner
        self.vocab_size = vocab_size

    @classmethod
    def from_tokenizer_json(cls, tokenizer_json: str, vocab_size: int,
                            eos_token_ids: Sequence[int]) -> GuideTokenizer:
        """From a Hugging Face `tokenizers` JSON (byte-level BPE); ids >= the tokenizer's own
        vocabulary (padding rows of the model) are never allowed."""
        ll = _ll()
        inner = ll.LLTokenizer(tokenizer_json, n_vocab=vocab_size,
                               eos_token=list(eos_token_ids) or None)
        return cls(inner, vocab_size)

    @classmethod
    def from_token_bytes(cls, tokens: Sequence[bytes], eos_token_ids: Sequence[int],
                         special_ids: Sequence[int]) -> GuideTokenizer:
        """From each id's bytes (a byte-level tokenizer); `special_ids` are never text."""
        ll = _ll()

        class _Wrapped:
            def __init__(self) -> None:
                self.tokens = list(tokens)
                self.eos_token_id = eos_token_ids[0] if eos_token_ids else None
                self.bos_token_id = None
                self.special_token_ids = list(special_ids)

            def __call__(self, text: str | bytes) -> list[int]:  # bytes are their own ids
                data = text.encode() if isinstance(text, str) else text
                return list(data)

        inner = ll.LLTokenizer(ll.TokenizerWrapper(_Wrapped()),
                               eos_token=list(eos_token_ids) or None)
        return cls(inner, len(tokens))


class Guide:
    """One request's position in its grammar. `accept` and `rollback` mutate it."""

    def __init__(self, tokenizer: GuideTokenizer, grammar: str) -> None:
        ll = _ll()
        self._tokenizer = tokenizer
        self._matcher = ll.LLMatcher(tokenizer.inner, grammar, log_level=0)
        if self._matcher.is_error():
            raise GrammarError(f"grammar rejected: {self._matcher.get_error()}")

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.vocab_size

    def allowed_bitmask(self) -> bytes:
        """Bit t (little-endian within each byte) is set when token t may come next; when the
        grammar is complete only the EOS ids are set."""
        return bytes(self._matcher.compute_bitmask())

    def allows(self, token_id: int) -> bool:
        mask = self.allowed_bitmask()
        byte = token_id >> 3
        return byte < len(mask) and bool((mask[byte] >> (token_id & 7)) & 1)

    def accept(self, token_id: int) -> None:
        """Advance over `token_id`; GrammarError if the grammar does not allow it (the guide
        is then unusable)."""
        if not self._matcher.consume_token(int(token_id)):
            raise GrammarError(f"token {token_id} is not allowed by the grammar: "
                               f"{self._matcher.get_error()}")

    def accept_all(self, token_ids: Sequence[int]) -> None:
        """Advance over earlier output (a retry resumes the grammar where the answer is)."""
        for t in token_ids:
            self.accept(t)

    @property
    def is_stopped(self) -> bool:
        """The grammar can take no more text: the answer is complete."""
        return bool(self._matcher.is_stopped())

    @property
    def is_accepting(self) -> bool:
        """The text so far is a complete sentence of the grammar (EOS is allowed)."""
        return bool(self._matcher.is_accepting())
