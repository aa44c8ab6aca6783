"""llama.cpp (through llama-cpp-python) on the same GGUF and workload, as a peer for
`engine_model.py`. Self-contained (standard library + `llama_cpp` + numpy) so it runs under
whichever Python has llama-cpp-python installed: `PYTHON llama_cpp_peer.py SPEC OUT`.

Batch 1 only (llama-cpp-python's `Llama` runs one sequence); each turn resets the context and
evaluates the whole prompt (as the other systems prefill from scratch), then decodes
`output_tokens` greedily, one `eval` per token. llama.cpp's "extra buffer types" (weight
repacking for AMX) are turned off: on this VM the AMX matmul dies with a general protection
fault (the CPU flags list AMX, the hypervisor does not let it run); the AVX-512 kernels remain.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str]) -> int:
    import llama_cpp.llama_cpp as low_level
    import numpy as np
    from llama_cpp import Llama

    defaults = low_level.llama_model_default_params

    def without_repack() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    low_level.llama_model_default_params = without_repack

    spec: dict[str, Any] = json.loads(Path(argv[0]).read_text())
    chunks = spec["chunks"]
    n_out = int(spec["output_tokens"])
    longest = sum(len(c) for c in chunks[0]) + len(chunks[0]) * n_out
    start = time.perf_counter()
    # logits_all: `scores` then has a row per context position (without it, only n_batch rows)
    llm = Llama(model_path=spec["gguf_path"], n_ctx=longest + 64, n_batch=512, logits_all=True,
                n_threads=int(spec["threads"]), n_threads_batch=int(spec["threads"]),
                verbose=False)
    out: dict[str, Any] = {"load_s": time.perf_counter() - start,
                           "weight_bytes": Path(spec["gguf_path"]).stat().st_size,
                           "rss_bytes_loaded": _rss_bytes()}
    context = list(chunks[0][0])
    decode_s: list[float] = []
    prefill_s: list[float] = []
    lengths: list[int] = []
    agent0: list[list[int]] = []
    for turn in range(len(chunks[0])):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(context)
        prefill_s.append(time.perf_counter() - t0)
        lengths.append(len(context))
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        generated = [token]
        for _ in range(n_out - 1):
            t0 = time.perf_counter()
            llm.eval([token])
            decode_s.append(time.perf_counter() - t0)
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            generated.append(token)
        agent0.append(generated)
        if turn + 1 < len(chunks[0]):
            context += generated + chunks[0][turn + 1]
    total = sum(decode_s)
    out["runs"] = [{
        "batch": 1, "decode_steps": len(decode_s), "tpot_s_p50": statistics.median(decode_s),
        "tpot_s_mean": total / len(decode_s), "output_tok_s": len(decode_s) / total,
        "prefill_s_per_turn": prefill_s, "prefill_tokens_per_turn": lengths,
        "prefill_tok_s": sum(lengths) / sum(prefill_s), "greedy_tokens_agent0": agent0,
    }]
    out["rss_bytes"] = _rss_bytes()
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(argv[1]).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
