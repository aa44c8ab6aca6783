"""Roofline times: a model preset on a hardware preset, for one engine (GPU).

prefill batch time = max(FLOPs / (peak x prefill_mfu), weight bytes / HBM bandwidth)
                     + prefill_batch_overhead_s
decode step time   = max(FLOPs / (peak x decode_mfu), (weights + KV read) / (HBM x decode_mbu))
                     + decode_step_overhead_s
The efficiency constants and overheads are the hardware preset's (each with its source).
Expert/data parallel layouts (`ModelCost.parallelism`) decide the weight bytes per GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from dualpath.sim.hardware import HardwareSpec
from dualpath.sim.model_cost import ModelCost

# DeepSeek-V3's node-limited routing sends a token to at most 4 nodes (V3 report, 2.1.2).
MAX_ROUTED_NODES = 4
# Dispatch in FP8 (1 byte/element), combine in BF16 (2 bytes/element): V3 report, 3.3.
EP_BYTES_PER_ELEMENT = 1 + 2


@dataclass(frozen=True)
class CostModel:
    model: ModelCost
    hw: HardwareSpec
    num_pe_gpus: int
    num_de_gpus: int
    num_pe_nodes: int

    @cached_property
    def peak_flops(self) -> float:
        return self.hw.flops(self.model.compute_dtype)

    @cached_property
    def pe_weight_bytes(self) -> float:
        return self.model.weight_bytes_per_gpu(self.num_pe_gpus)

    @cached_property
    def de_weight_bytes(self) -> float:
        return self.model.weight_bytes_per_gpu(self.num_de_gpus)

    def kv_hbm_bytes(self, weight_bytes: float) -> float:
        """HBM left for KV after weights and the activation reserve (at least 1 GB)."""
        usable = self.hw.hbm_bytes * (1.0 - self.hw.hbm_reserve_fraction)
        return max(1e9, usable - weight_bytes)

    # -- prefill ---------------------------------------------------------------------------
    def attention_time_s(self, context_tokens: int, new_tokens: int) -> float:
        """Predicted attention time (the batch-formation quota's unit, DESIGN.md 3)."""
        return self.model.attention_flops(context_tokens, new_tokens) / (self.peak_flops * self.hw.prefill_mfu)

    def prefill_time_s(self, flops: float) -> float:
        compute = flops / (self.peak_flops * self.hw.prefill_mfu)
        weights = self.pe_weight_bytes / self.hw.hbm_bytes_s
        return max(compute, weights) + self.hw.prefill_batch_overhead_s

    def prefill_tokens_per_s(self, context_tokens: int, new_tokens: int) -> float:
        """Prompt tokens (hit + miss) one PE processes per second for such requests (β)."""
        t = self.prefill_time_s(self.model.prefill_flops(context_tokens, new_tokens))
        return (context_tokens + new_tokens) / t

    @cached_property
    def ep_bytes_per_token(self) -> float:
        """CNIC bytes one prefill token's expert all-to-all puts on its GPU's NIC."""
        m = self.model
        if m.parallelism != "ep" or not m.num_routed_experts or self.num_pe_nodes <= 1:
            return 0.0
        n = self.num_pe_nodes
        remote = min(MAX_ROUTED_NODES, n) * (n - 1) / n
        moe_layers = m.num_layers - m.num_dense_layers
        return remote * m.hidden_size * EP_BYTES_PER_ELEMENT * moe_layers

    # -- decode ----------------------------------------------------------------------------
    def decode_step_s(self, batch: int, mean_context_tokens: float) -> float:
        if batch <= 0:
            return 0.0
        m = self.model
        ctx = max(1, int(mean_context_tokens))
        flops = batch * m.decode_flops(ctx)
        bytes_read = self.de_weight_bytes + batch * m.decode_kv_read_bytes(ctx)
        t = max(flops / (self.peak_flops * self.hw.decode_mfu),
                bytes_read / (self.hw.hbm_bytes_s * self.hw.decode_mbu))
        return t + self.hw.decode_step_overhead_s
