"""How closely each execution mode follows float32: greedy tokens over a fixed prompt set.

For each prompt (chat-templated) float32 generates greedily up to `max_tokens` (stopping at
EOS); every other mode then
- generates the same way: `exact_match` (share of prompts whose whole answer is identical) and
  `prefix_agreement` (mean share of float32's answer reproduced before the first difference);
- is teacher-forced on float32's answer (one prefill of prompt + answer): `top1_agreement`,
  the share of answer positions where its argmax is float32's token — a per-token measure
  that is not thrown off by one early divergence.

`quality(...)` returns the JSON-ready dict; `add_arguments` / `run` plug it into a CLI.
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Sequence
from typing import Any

from dualpath.bench.report import format_table, machine_info, parse_modes
from dualpath.core.errors import UserInputError

PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain in two sentences why the sky is blue.",
    "List three primary colors.",
    "What is 17 multiplied by 23?",
    "Translate 'Good morning, how are you?' into French.",
    "Give me a short haiku about autumn leaves.",
    "What does the Unix command `ls -la` do?",
    "Summarize the plot of Romeo and Juliet in one sentence.",
    "Name the planets of the solar system in order from the sun.",
    "How do I reverse a list in Python?",
    "What is the boiling point of water at sea level in Celsius?",
)
DEFAULT_MODES: tuple[tuple[str, str], ...] = (
    ("bfloat16", "none"), ("float32", "int8"), ("bfloat16", "int8"), ("float32", "int4"),
    ("bfloat16", "int4"))


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def quality(model: str = "smollm2", modes: Sequence[tuple[str, str]] = DEFAULT_MODES,
            prompts: Sequence[str] = PROMPTS, max_tokens: int = 48,
            threads: int = 1) -> dict[str, Any]:
    import torch

    from dualpath.model.generation import generate
    from dualpath.model.loader import load_model
    from dualpath.model.threads import set_torch_threads

    if max_tokens < 1 or not prompts:
        raise UserInputError("quality needs prompts and max_tokens >= 1")
    set_torch_threads(threads)
    ref, tok = load_model(model)
    encoded = [tok.encode_chat([{"role": "user", "content": p}]) for p in prompts]
    eos = tok.eos_token_ids
    answers = [generate(ref, ids, max_tokens=max_tokens, eos_token_ids=eos).token_ids
               for ids in encoded]
    del ref
    gc.collect()
    results: dict[str, Any] = {}
    for dtype, quantization in modes:
        m, _ = load_model(model, dtype=dtype, quantization=quantization)
        exact, prefix, top1_hits, top1_total, texts = 0, 0.0, 0, 0, []
        for ids, want in zip(encoded, answers, strict=True):
            got = generate(m, ids, max_tokens=max_tokens, eos_token_ids=eos).token_ids
            exact += got == want
            prefix += _lcp(got, want) / len(want)
            texts.append(tok.decode(got))
            logits = m.prefill(ids + want, logits="all").logits
            assert logits is not None
            chosen = torch.argmax(logits[len(ids) - 1 : len(ids) - 1 + len(want)], dim=-1)
            top1_hits += int((chosen == torch.tensor(want)).sum())
            top1_total += len(want)
        results[f"{dtype}/{quantization}"] = {
            "dtype": dtype, "quantization": quantization,
            "exact_match": exact / len(prompts), "prefix_agreement": prefix / len(prompts),
            "top1_agreement": top1_hits / top1_total, "answers": texts,
        }
        del m
        gc.collect()
    return {"benchmark": "model-quality", "model": model, "reference": "float32/none",
            "max_tokens": max_tokens, "prompts": list(prompts),
            "reference_answers": [tok.decode(a) for a in answers], "modes": results,
            "machine": machine_info()}


def table(result: dict[str, Any]) -> str:
    rows = [[label, r["exact_match"], r["prefix_agreement"], r["top1_agreement"]]
            for label, r in result["modes"].items()]
    return format_table(["mode", "exact_match", "prefix_agreement", "top1_agreement"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--modes", default=",".join(f"{d}:{q}" for d, q in DEFAULT_MODES))
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        modes = parse_modes(args.modes)
    except IndexError:
        raise UserInputError(f"bad --modes {args.modes!r} (want dtype:quantization,...)") from None
    result = quality(args.model, modes, max_tokens=args.max_tokens, threads=args.threads)
    print(table(result))
    return result


if __name__ == "__main__":
    from dualpath.bench.report import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--json", default=None)
    ns = parser.parse_args()
    out = run(ns)
    if ns.json:
        write_json(ns.json, out)
