"""One system's bare-model measurement, run in a fresh process by `engine_model.py`.

The workload is N agents in lockstep over T turns: turn t's prompt is everything before it
(earlier prompts and generated tokens) plus the turn's new chunk; each turn the whole prompt is
prefilled from scratch (all N in one batch), then `output_tokens` are generated greedily, one
decode step per token for all N at once. Agents have equal lengths (so Hugging Face batches
them without padding) but different tokens. Measured: each decode step (TPOT at batch N), each
prefill, load time, weight bytes and RSS.

Systems: "dualpath" (`Transformer` + `PagedKVCache`, any dtype / quantization) and
"transformers" (Hugging Face `AutoModelForCausalLM` loading the same GGUF, float32, offline).
Usage (by `engine_model.run_model_bench`): `python -m dualpath.bench.model_workers SPEC OUT`,
with SPEC and OUT JSON file paths.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

Chunks = list[list[list[int]]]  # [agent][turn] -> token ids (turn 0: the first prompt)


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _summary(batch: int, decode_s: list[float], prefill_s: list[float],
             prompt_tokens: list[int], first_tokens: list[list[int]]) -> dict[str, Any]:
    import statistics

    total = sum(decode_s)
    return {
        "batch": batch,
        "decode_steps": len(decode_s),
        "tpot_s_p50": statistics.median(decode_s),
        "tpot_s_mean": total / len(decode_s),
        "output_tok_s": batch * len(decode_s) / total,
        "prefill_s_per_turn": prefill_s,
        "prefill_tokens_per_turn": prompt_tokens,
        "prefill_tok_s": batch * sum(prompt_tokens) / sum(prefill_s),
        "greedy_tokens_agent0": first_tokens,
    }


def run_dualpath(spec: dict[str, Any], chunks: Chunks) -> dict[str, Any]:
    import torch

    from dualpath.model.kv_cache import PagedKVCache
    from dualpath.model.loader import load_model
    from dualpath.model.transformer import PrefillRequest

    start = time.perf_counter()
    model, _ = load_model(spec["model"], dtype=spec["dtype"], quantization=spec["quantization"])
    out: dict[str, Any] = {"load_s": time.perf_counter() - start,
                           "weight_bytes": model.weight_bytes(), "rss_bytes_loaded": rss_bytes()}
    n_out = int(spec["output_tokens"])
    runs = []
    for batch in spec["batch_sizes"]:
        contexts = [list(chunks[a][0]) for a in range(batch)]
        longest = sum(len(c) for c in chunks[0]) + len(chunks[0]) * n_out
        cache = PagedKVCache(model.config, num_blocks=batch * (longest // 64 + 2), block_size=64)
        decode_s: list[float] = []
        prefill_s: list[float] = []
        lengths: list[int] = []
        agent0: list[list[int]] = []
        for turn in range(len(chunks[0])):
            t0 = time.perf_counter()
            outs = model.prefill_batch([PrefillRequest(c) for c in contexts])
            prefill_s.append(time.perf_counter() - t0)
            lengths.append(len(contexts[0]))
            sids = [f"{turn}-{a}" for a in range(batch)]
            for sid, ctx, o in zip(sids, contexts, outs, strict=True):
                cache.allocate(sid, len(ctx) + n_out)
                for layer, kv in enumerate(o.new_kv):
                    cache.write(sid, layer, 0, kv)
                cache.commit(sid, len(ctx))
            tokens = [int(torch.argmax(o.logits)) for o in outs if o.logits is not None]
            generated = [[t] for t in tokens]
            seqs = [cache.sequence(sid) for sid in sids]
            for _ in range(n_out - 1):
                t0 = time.perf_counter()
                logits = model.decode(tokens, seqs)
                decode_s.append(time.perf_counter() - t0)
                tokens = [int(t) for t in logits.argmax(dim=-1)]
                for g, t in zip(generated, tokens, strict=True):
                    g.append(t)
            agent0.append(generated[0])
            for a, sid in enumerate(sids):
                cache.free(sid)
                if turn + 1 < len(chunks[a]):
                    contexts[a] += generated[a] + chunks[a][turn + 1]
        runs.append(_summary(batch, decode_s, prefill_s, lengths, agent0))
    out.update(runs=runs, rss_bytes=rss_bytes(), peak_rss_bytes=peak_rss_bytes())
    return out


def run_transformers(spec: dict[str, Any], chunks: Chunks) -> dict[str, Any]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(spec["gguf_path"])
    start = time.perf_counter()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                              dtype=torch.float32).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    out: dict[str, Any] = {"load_s": time.perf_counter() - start, "weight_bytes": weight_bytes,
                           "rss_bytes_loaded": rss_bytes()}
    n_out = int(spec["output_tokens"])
    runs = []
    with torch.inference_mode():
        for batch in spec["batch_sizes"]:
            contexts = [list(chunks[a][0]) for a in range(batch)]
            decode_s: list[float] = []
            prefill_s: list[float] = []
            lengths: list[int] = []
            agent0: list[list[int]] = []
            for turn in range(len(chunks[0])):
                t0 = time.perf_counter()
                res = hf(input_ids=torch.tensor(contexts), use_cache=True)
                prefill_s.append(time.perf_counter() - t0)
                lengths.append(len(contexts[0]))
                past = res.past_key_values
                nxt = res.logits[:, -1].argmax(dim=-1)
                generated = [[int(t)] for t in nxt]
                for _ in range(n_out - 1):
                    t0 = time.perf_counter()
                    res = hf(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
                    decode_s.append(time.perf_counter() - t0)
                    past = res.past_key_values
                    nxt = res.logits[:, -1].argmax(dim=-1)
                    for g, t in zip(generated, nxt, strict=True):
                        g.append(int(t))
                agent0.append(generated[0])
                del past, res
                for a in range(batch):
                    if turn + 1 < len(chunks[a]):
                        contexts[a] += generated[a] + chunks[a][turn + 1]
            runs.append(_summary(batch, decode_s, prefill_s, lengths, agent0))
    out.update(runs=runs, rss_bytes=rss_bytes(), peak_rss_bytes=peak_rss_bytes())
    return out


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    from dualpath.model.threads import set_torch_threads

    set_torch_threads(int(spec["threads"]))
    run = run_dualpath if spec["system"] == "dualpath" else run_transformers
    result = run(spec, spec["chunks"])
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
