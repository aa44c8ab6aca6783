"""Token logprobs in OpenAI's two shapes.

Chat (`logprobs: true`, `top_logprobs: N`): `{"content": [{"token", "logprob", "bytes",
"top_logprobs": [{"token", "logprob", "bytes"}, ...N]}, ...], "refusal": null}`.
Completions (`logprobs: N`): `{"tokens": [...], "token_logprobs": [...], "top_logprobs":
[{token: logprob, ...N}, ...], "text_offset": [...]}`. A streamed chunk carries the entries
of its own tokens (text offsets continue across chunks).

The values are the model's own distribution at each step (before penalties, temperature and
grammar masks), as vLLM reports them by default. A token's text is its own decode (special
tokens decode to their text only where the tokenizer shows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dualpath.core.requests import TokenLogprob
from dualpath.server.tokenizer import Tokenizer

_CACHE_LIMIT = 65_536


class LogprobFormatter:
    """Turns (token id, TokenLogprob) pairs into OpenAI objects; caches token texts."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._tokenizer.decode([token_id])
            if len(self._texts) < _CACHE_LIMIT:
                self._texts[token_id] = text
        return text

    def chat(self, token_ids: Sequence[int], logprobs: Sequence[TokenLogprob]) -> dict[str, Any]:
        content = []
        for tok, lp in zip(token_ids, logprobs, strict=True):
            text = self.text(tok)
            content.append({
                "token": text, "logprob": lp.logprob, "bytes": list(text.encode()),
                "top_logprobs": [{"token": (t := self.text(i)), "logprob": v,
                                  "bytes": list(t.encode())} for i, v in lp.top],
            })
        return {"content": content, "refusal": None}

    def completion(self, token_ids: Sequence[int], logprobs: Sequence[TokenLogprob],
                   offset: int = 0) -> tuple[dict[str, Any], int]:
        """The object and the text offset after these tokens."""
        tokens, values, tops, offsets = [], [], [], []
        for tok, lp in zip(token_ids, logprobs, strict=True):
            text = self.text(tok)
            tokens.append(text)
            values.append(lp.logprob)
            tops.append({self.text(i): v for i, v in lp.top})
            offsets.append(offset)
            offset += len(text)
        return ({"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
                 "text_offset": offsets}, offset)
