"""Measure xgrammar against llguidance on SmolLM2's 49k vocabulary, on this CPU.

What the decision record (docs/decisions/guided-decoding-engine.md) needs: import time,
tokenizer set-up time (once per engine process), grammar compile time for a typical tool
schema and a typical response_format schema, and the per-token mask cost while walking a
valid answer token by token (mask + consume, what one decode step adds).

    .venv/bin/python benchmarks/grammar_engines.py [--json benchmarks/results/grammar_engines.json]

xgrammar is not a dependency of the project; install it into a side directory to measure it:
`pip install --no-deps --target /tmp/xgr_site xgrammar==0.2.9 apache-tvm-ffi` and run with
`PYTHONPATH=/tmp/xgr_site`. An engine that is not importable is reported as absent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

TOOL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}
TOOL_ANSWER = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": 3}}'

RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "year": {"type": "integer"},
        "rating": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
        "director": {"type": "object", "properties": {
            "name": {"type": "string"}, "born": {"type": "integer"}},
            "required": ["name"]},
    },
    "required": ["title", "year", "tags"],
}
RESPONSE_ANSWER = ('{"title": "Alien", "year": 1979, "rating": 8.5, "tags": ["sci-fi", "horror"], '
                   '"director": {"name": "Ridley Scott", "born": 1937}}')


def _stats(samples_s: list[float]) -> dict[str, float]:
    return {"p50_s": statistics.median(samples_s), "mean_s": statistics.fmean(samples_s),
            "max_s": max(samples_s)}


def measure_llguidance(tok: Any, vocab: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    import llguidance
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lltok = llguidance.LLTokenizer(tok.inner.to_str(), n_vocab=vocab,
                                   eos_token=list(tok.eos_token_ids))
    tokenizer_s = time.perf_counter() - t0
    out: dict[str, Any] = {"version": llguidance.get_version() if hasattr(
        llguidance, "get_version") else "?", "import_s": import_s, "tokenizer_s": tokenizer_s}
    bitmask = np.zeros((vocab + 31) // 32, dtype=np.int32)
    for name, schema, answer in (("tool", TOOL_SCHEMA, TOOL_ANSWER),
                                 ("response", RESPONSE_SCHEMA, RESPONSE_ANSWER)):
        compiles = []
        for _ in range(5):
            t0 = time.perf_counter()
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(schema), defaults={"whitespace_flexible": False, "item_separator": ", ",
                          "key_separator": ": "})
            matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
            compiles.append(time.perf_counter() - t0)
        assert not matcher.is_error(), matcher.get_error()
        ids = tok.encode(answer)
        steps = []
        for t in ids:
            t0 = time.perf_counter()
            matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)
            allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:vocab]
            ok = matcher.consume_token(t)
            steps.append(time.perf_counter() - t0)
            assert allowed[t] and ok, (t, matcher.get_error())
        out[name] = {"compile": _stats(compiles), "mask_per_token": _stats(steps),
                     "tokens": len(ids)}
    return out


def measure_xgrammar(tok: Any, vocab: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        import torch
        import xgrammar as xgr
    except ImportError as exc:
        return {"absent": str(exc)}
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pieces = tok.inner.get_vocab(with_added_tokens=True)
    encoded = [""] * vocab
    for piece, i in pieces.items():
        encoded[i] = piece
    info = xgr.TokenizerInfo(encoded, vocab_type=xgr.VocabType.BYTE_LEVEL, vocab_size=vocab,
                             stop_token_ids=list(tok.eos_token_ids))
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    tokenizer_s = time.perf_counter() - t0
    out: dict[str, Any] = {"version": getattr(xgr, "__version__", "?"), "import_s": import_s,
                           "tokenizer_s": tokenizer_s}
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    for name, schema, answer in (("tool", TOOL_SCHEMA, TOOL_ANSWER),
                                 ("response", RESPONSE_SCHEMA, RESPONSE_ANSWER)):
        compiles = []
        for _ in range(5):
            t0 = time.perf_counter()
            compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                   separators=(", ", ": "))
            matcher = xgr.GrammarMatcher(compiled)
            compiles.append(time.perf_counter() - t0)
        ids = tok.encode(answer)
        steps = []
        for t in ids:
            t0 = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            allowed = np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")[:vocab]
            ok = matcher.accept_token(t)
            steps.append(time.perf_counter() - t0)
            assert allowed[t] and ok, t
        out[name] = {"compile": _stats(compiles), "mask_per_token": _stats(steps),
                     "tokens": len(ids)}
    del torch
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    import os

    from dualpath.model.source import load_config_and_tokenizer
    config, tok = load_config_and_tokenizer("smollm2")
    vocab = config.vocab_size
    result = {"vocab_size": vocab, "load_average": os.getloadavg(),
              "llguidance": measure_llguidance(tok, vocab),
              "xgrammar": measure_xgrammar(tok, vocab)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
