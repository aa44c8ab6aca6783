"""The compute model against DeepSeek's published measurements of its own inference system.

DeepSeek, "DeepSeek-V3/R1 Inference System Overview" (Open-Source Week day 6, 2025-03-01),
statistics of its online service on H800 nodes (8 GPUs each; prefill EP32, decode EP144):

- prefill: 73.7k input tokens/s per node, cache hits included; 56.3% of input tokens hit;
- decode: 14.8k output tokens/s per node at an average output speed of 20-22 tokens/s per
  user.

The post gives no prompt or context lengths, so the check sweeps them: our roofline for
DeepSeek-V3 (the `ds-660b` preset without V3.2's sparse-attention indexer, V3/R1's dense
MLA) on the hopper testbed gives the prefill throughput per node at that hit rate for mean
prompts of 1K-16K tokens, and the decode throughput per node at 21 tokens/s per user (the
largest batch whose step takes at most 1/21 s) for mean contexts of 1K-8K tokens. The linear
FLOPs alone of DeepSeek's prefill figure imply a lower bound on its MFU. Nothing here is
fed back into the simulator's constants: it is a report (`dualpath bench sim-validate`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dualpath.sim.cost import CostModel
from dualpath.sim.hardware import HardwareSpec, load_hardware
from dualpath.sim.model_cost import DS_660B

SOURCE = "DeepSeek-V3/R1 Inference System Overview (DeepSeek Open-Source Week day 6, 2025-03-01)"
PREFILL_INPUT_TOK_S_PER_NODE = 73.7e3
PREFILL_CACHE_HIT_FRACTION = 0.563
DECODE_OUTPUT_TOK_S_PER_NODE = 14.8e3
DECODE_TOK_S_PER_USER = 21.0  # "20-22 tokens per second"
PREFILL_EP_GPUS, DECODE_EP_GPUS = 32, 144
GPUS_PER_NODE = 8

PROMPTS = (1024, 2048, 4096, 8192, 16384)
CONTEXTS = (1024, 2048, 4096, 8192)


def compute_check(hardware: HardwareSpec | None = None) -> dict[str, Any]:
    hw = hardware if hardware is not None else load_hardware(None)
    v3 = replace(DS_660B, name="ds-v3", index_heads=0, index_head_dim=0, index_topk=0)
    cost = CostModel(v3, hw)
    w_prefill = cost.weight_bytes(PREFILL_EP_GPUS)
    w_decode = cost.weight_bytes(DECODE_EP_GPUS)
    hit = PREFILL_CACHE_HIT_FRACTION
    prefill = {}
    for p in PROMPTS:
        cached = int(hit * p)
        t = cost.prefill_member_s(v3.prefill_flops(cached, p - cached), w_prefill)
        prefill[str(p)] = GPUS_PER_NODE * p / t
    step_budget = 1.0 / DECODE_TOK_S_PER_USER
    decode = {}
    for ctx in CONTEXTS:
        batch = 0
        while cost.decode_step_s(batch + 1, ctx, w_decode) <= step_budget:
            batch += 1
        decode[str(ctx)] = {"batch_per_gpu": batch,
                            "output_tok_s_per_node": batch * DECODE_TOK_S_PER_USER * GPUS_PER_NODE}
    computed_per_gpu = PREFILL_INPUT_TOK_S_PER_NODE * (1 - hit) / GPUS_PER_NODE
    return {
        "source": SOURCE,
        "published": {"prefill_input_tok_s_per_node": PREFILL_INPUT_TOK_S_PER_NODE,
                      "prefill_cache_hit_fraction": hit,
                      "decode_output_tok_s_per_node": DECODE_OUTPUT_TOK_S_PER_NODE,
                      "decode_tok_s_per_user": DECODE_TOK_S_PER_USER,
                      "decode_batch_per_gpu": DECODE_OUTPUT_TOK_S_PER_NODE
                      / GPUS_PER_NODE / DECODE_TOK_S_PER_USER},
        "sim_prefill_input_tok_s_per_node_by_prompt": prefill,
        "sim_decode_at_published_user_speed_by_context": decode,
        "published_prefill_linear_mfu_lower_bound": computed_per_gpu * v3.linear_flops_per_token
        / cost.peak_flops,
        "sim_prefill_mfu": hw.prefill_mfu,
    }
