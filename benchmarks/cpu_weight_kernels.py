"""Which CPU kernel should run SmolLM2-135M's linear layers? (docs/decisions/cpu-weight-quantization.md)

A synthetic stack with SmolLM2-135M's shapes (30 layers of q, k, v, o, gate, up, down, plus
the 49152 x 576 LM head: about 134M weights, far more than the caches, so the weights stream
from DRAM as in real decode) is run through each candidate at decode sizes (M = 1 and 4 rows)
and prefill sizes (M = 256): float32 and bfloat16 dense `F.linear`, torch's
`_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu` (what `dualpath.model.quant` uses),
fbgemm's dynamic int8 `quantized.linear_dynamic` (int8 activations too), and torchao's int8
weight-only and int4 (CPU "opaque" layout) tensors when torchao can be imported. All
candidates are built in one process and run interleaved, round by round, so they share the
machine's load; the JSON has every round's step time and the medians. (The head runs one row:
prefill only needs the last token's logits.)

    .venv/bin/python benchmarks/cpu_weight_kernels.py --json results/cpu_weight_kernels.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from dualpath.model.quant import Int4Linear, Int8Linear

SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
HEAD = (49152, 576)
Layer = Callable[[torch.Tensor], torch.Tensor]


def _candidates() -> dict[str, tuple[Callable[[torch.Tensor], Layer], torch.dtype]]:
    def dense(dtype: torch.dtype) -> Callable[[torch.Tensor], Layer]:
        def make(w: torch.Tensor) -> Layer:
            wd = w.to(dtype)
            return lambda x: F.linear(x, wd)
        return make

    def fbgemm(w: torch.Tensor) -> Layer:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, w.abs().amax(1) / 127,
                                           torch.zeros(w.shape[0], dtype=torch.long), 0,
                                           torch.qint8)
        packed = torch.ops.quantized.linear_prepack(q, None)
        return lambda x: torch.ops.quantized.linear_dynamic(x, packed)

    def ours(cls: Any) -> Callable[[torch.Tensor], Layer]:
        def make(w: torch.Tensor) -> Layer:
            return cls.from_float(w)._matmul  # the kernel alone, never the dense path
        return make

    out: dict[str, tuple[Callable[[torch.Tensor], Layer], torch.dtype]] = {
        "fp32_dense": (dense(torch.float32), torch.float32),
        "bf16_dense": (dense(torch.bfloat16), torch.bfloat16),
        "int8pack_mm": (ours(Int8Linear), torch.bfloat16),
        "int4pack_mm": (ours(Int4Linear), torch.bfloat16),
        "fbgemm_dynamic_int8": (fbgemm, torch.float32),
    }
    try:
        from torchao.prototype.quantization.int4.int4_opaque_tensor import Int4OpaqueTensor
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        return out

    def ao_int8(w: torch.Tensor) -> Layer:
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False).to(torch.bfloat16)
        lin.weight.data = w.to(torch.bfloat16)
        quantize_(lin, Int8WeightOnlyConfig())
        return lin

    def ao_int4(w: torch.Tensor) -> Layer:
        weight = Int4OpaqueTensor.from_hp(w.to(torch.bfloat16), [1, 32])
        return lambda x: F.linear(x, weight)

    out["torchao_int8_weight_only"] = (ao_int8, torch.bfloat16)
    out["torchao_int4_opaque"] = (ao_int4, torch.bfloat16)
    return out


def measure(rows: tuple[int, ...], rounds: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    weights = [[torch.randn(n, k, generator=gen) * 0.05 for n, k in SHAPES] for _ in range(30)]
    head_w = torch.randn(*HEAD, generator=gen) * 0.05
    built = {name: ([[make(w) for w in ws] for ws in weights], make(head_w), dtype)
             for name, (make, dtype) in _candidates().items()}
    del weights, head_w
    times: dict[str, dict[str, list[float]]] = {name: {str(m): [] for m in rows} for name in built}
    with torch.inference_mode():
        for m in rows:
            x32 = torch.randn(m, 576, generator=gen)
            xi32 = torch.randn(m, 1536, generator=gen)
            for r in range(rounds + 1):  # round 0 warms up
                for name, (layers, head, dtype) in built.items():
                    x, xi = x32.to(dtype), xi32.to(dtype)
                    t0 = time.perf_counter()
                    for ws in layers:
                        for (_, k), f in zip(SHAPES, ws, strict=True):
                            f(x if k == 576 else xi)
                    head(x[:1])
                    if r:
                        times[name][str(m)].append(time.perf_counter() - t0)
    return {"benchmark": "cpu-weight-kernels", "threads": threads, "rounds": rounds,
            "rows": list(rows), "torch": torch.__version__,
            "step_s_median": {name: {m: statistics.median(t) for m, t in r.items()}
                              for name, r in times.items()},
            "step_s": times}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4,256")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = measure(tuple(int(r) for r in args.rows.split(",")), args.rounds, args.threads)
    for name, by_m in result["step_s_median"].items():
        sys.stdout.write(f"{name:26s} " + "  ".join(f"M={m}: {s * 1e3:8.1f} ms"
                                                    for m, s in by_m.items()) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
