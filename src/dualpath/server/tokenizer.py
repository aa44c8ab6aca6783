"""What the server needs from a tokenizer, and a byte-level one for tests and the echo engine.

`Tokenizer` is a structural protocol: `dualpath.model.tokenizer` satisfies it without importing
this module. The server only ever calls these five members; incremental detokenization is
built on `decode` (see `detokenizer.py`), so a tokenizer need not provide its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dualpath.core.backend import Tokenizer
from dualpath.core.guide import GuideTokenizer

__all__ = ["ByteTokenizer", "Tokenizer"]


class ByteTokenizer:
    """One token per UTF-8 byte (ids 0-255) plus ChatML special tokens. For tests only.

    Special tokens are recognised in `encode` so that a rendered chat template round-trips.
    """

    SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

    def __init__(self) -> None:
        self._special_ids = {s: 256 + i for i, s in enumerate(self.SPECIALS)}

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.SPECIALS)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        # <|im_end|> ends a chat turn, <|endoftext|> a document (as in SmolLM2-Instruct).
        return (self._special_ids["<|im_end|>"], self._special_ids["<|endoftext|>"])

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        pos = 0
        while pos < len(text):
            nxt, which = len(text), ""
            for special in self.SPECIALS:
                found = text.find(special, pos)
                if found != -1 and found < nxt:
                    nxt, which = found, special
            ids.extend(text[pos:nxt].encode("utf-8"))
            if which:
                ids.append(self._special_ids[which])
                nxt += len(which)
            pos = nxt
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return bytes(t for t in token_ids if 0 <= t < 256).decode("utf-8", errors="replace")

    def guide_tokenizer(self, vocab_size: int) -> GuideTokenizer:
        """This vocabulary for guided decoding (a `core.guide.GuideTokenizer`)."""
        tokens = [bytes([i]) for i in range(256)] + [s.encode() for s in self.SPECIALS]
        return GuideTokenizer.from_token_bytes(tokens, self.eos_token_ids,
                                               range(256, len(tokens)))

    chat_template: str | None = None  # ChatML, rendered below

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)
