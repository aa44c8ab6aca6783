"""Roofline times: a model preset on a hardware preset, for one engine (GPU) of an EP group.

prefill member time = max(FLOPs / (peak x prefill_mfu), weight bytes / HBM bandwidth)
decode member time  = max(FLOPs / (peak x decode_mfu), (weights + KV read) / (HBM x decode_mbu))
A forward of an expert-parallel group is lockstep (`sim.prefill`, `sim.decode`): it takes the
slowest member's time plus the fixed per-forward overhead (`prefill_batch_overhead_s`,
`decode_step_overhead_s`). The efficiency constants and overheads are the hardware preset's
(each with its source). A hardware file may instead carry a profiled engine (measured
per-token costs, `HardwareSpec.profiled_prefill` / `profiled_decode`), which then replaces
the roofline: a prefill forward costs Σ (context x `prefill_context_token_s` + new x
`prefill_new_token_s` + attention pairs x `prefill_attention_pair_s`) over its chunks and a
decode step batch x `decode_seq_s` + Σ context x `decode_context_token_s` (plus the same
overheads).

Weights per GPU follow the EP group, not the cluster: routed experts are sharded over the
`ModelCost.prefill_ep_gpus` / `decode_ep_gpus` GPUs of one group (an instance), so a bigger
cluster is more instances with the same per-GPU weights, KV room and step time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from dualpath.core.frozen import reduce_frozen
from dualpath.sim.hardware import HardwareSpec
from dualpath.sim.model_cost import ModelCost

# DeepSeek-V3's node-limited routing sends a token to at most 4 nodes (V3 report, 2.1.2).
MAX_ROUTED_NODES = 4
# Dispatch in FP8 (1 byte/element), combine in BF16 (2 bytes/element): V3 report, 3.3.
EP_BYTES_PER_ELEMENT = 1 + 2


def attention_pairs(context_tokens: float, new_tokens: float) -> float:
    """Query-key pairs of causal attention for `new_tokens` after `context_tokens`: new token
    i sees the context and itself and the i new tokens before it."""
    return new_tokens * context_tokens + new_tokens * (new_tokens + 1) / 2


@dataclass(frozen=True)
class CostModel:
    model: ModelCost
    hw: HardwareSpec

    @cached_property
    def peak_flops(self) -> float:
        return self.hw.flops(self.model.compute_dtype)

    def weight_bytes(self, ep_gpus: int) -> float:
        """HBM one GPU's weights take in an EP group of `ep_gpus` GPUs."""
        return self.model.weight_bytes_per_gpu(ep_gpus)

    def kv_hbm_bytes(self, weight_bytes: float) -> float:
        """HBM left for KV after weights and the activation reserve (at least 1 GB)."""
        usable = self.hw.hbm_bytes * (1.0 - self.hw.hbm_reserve_fraction)
        return max(1e9, usable - weight_bytes)

    # -- prefill ---------------------------------------------------------------------------
    def attention_time_s(self, context_tokens: int, new_tokens: int) -> float:
        """Predicted attention time (the batch-formation quota's unit, DESIGN.md 3); a
        profiled engine predicts its whole chunk time."""
        hw = self.hw
        if hw.profiled_prefill:
            return self._profiled_prefill_s(context_tokens, new_tokens)
        return self.model.attention_flops(context_tokens, new_tokens) / (self.peak_flops * hw.prefill_mfu)

    def _profiled_prefill_s(self, context_tokens: float, new_tokens: float,
                            pairs: float | None = None) -> float:
        hw = self.hw
        if pairs is None:
            pairs = attention_pairs(context_tokens, new_tokens)
        return (context_tokens * hw.prefill_context_token_s + new_tokens * hw.prefill_new_token_s
                + pairs * hw.prefill_attention_pair_s)

    def prefill_member_s(self, flops: float, weight_bytes: float, context_tokens: int = 0,
                         new_tokens: int = 0, pairs: float | None = None) -> float:
        """One member's share of a group forward (no fixed overhead): its batch's FLOPs
        (roofline), or its chunks' context and new tokens and attention pairs summed (a
        profiled engine; `pairs` None = one chunk of those sizes)."""
        hw = self.hw
        if hw.profiled_prefill:
            return self._profiled_prefill_s(context_tokens, new_tokens, pairs)
        compute = flops / (self.peak_flops * hw.prefill_mfu)
        weights = weight_bytes / self.hw.hbm_bytes_s
        return compute if compute > weights else weights

    def prefill_time_s(self, flops: float, weight_bytes: float, context_tokens: int = 0,
                       new_tokens: int = 0) -> float:
        """A forward of one (balanced) member's batch, with the per-forward overhead."""
        return (self.prefill_member_s(flops, weight_bytes, context_tokens, new_tokens)
                + self.hw.prefill_batch_overhead_s)

    def prefill_tokens_per_s(self, context_tokens: int, new_tokens: int, weight_bytes: float) -> float:
        """Prompt tokens (hit + miss) one PE processes per second for such requests (β)."""
        t = self.prefill_time_s(self.model.prefill_flops(context_tokens, new_tokens), weight_bytes,
                                context_tokens, new_tokens)
        return (context_tokens + new_tokens) / t

    def ep_bytes_per_token(self, group_nodes: int) -> float:
        """CNIC bytes one prefill token's expert all-to-all puts on its GPU's NIC, in an EP
        group spanning `group_nodes` nodes (only the other nodes' share crosses the CNIC)."""
        m = self.model
        if m.parallelism != "ep" or not m.num_routed_experts or group_nodes <= 1:
            return 0.0
        n = group_nodes
        remote = min(MAX_ROUTED_NODES, n) * (n - 1) / n
        moe_layers = m.num_layers - m.num_dense_layers
        return remote * m.hidden_size * EP_BYTES_PER_ELEMENT * moe_layers

    # -- decode ----------------------------------------------------------------------------
    def decode_member_s(self, batch: int, mean_context_tokens: float, weight_bytes: float) -> float:
        """One member's decode step (no fixed overhead); 0 for an empty batch."""
        if batch <= 0:
            return 0.0
        hw = self.hw
        if hw.profiled_decode:
            return batch * (hw.decode_seq_s + mean_context_tokens * hw.decode_context_token_s)
        # ModelCost.decode_flops / decode_kv_read_bytes, unrolled (called on every batch change).
        lin, attn, idx, topk, main_b, idx_b, kvb, f_rate, b_rate = self._decode_terms
        c = int(mean_context_tokens)
        if c < 1:
            c = 1
        if topk:
            attended = c + 1 if c + 1 < topk else topk
            per_flops = lin + attended * attn + (c + 1) * idx
            per_bytes = (c if c < topk else topk) * main_b + c * idx_b
        else:
            per_flops = lin + (c + 1) * attn
            per_bytes = c * kvb
        a = batch * per_flops / f_rate
        b = (weight_bytes + batch * per_bytes) / b_rate
        return a if a > b else b

    @cached_property
    def _decode_terms(self) -> tuple[float, float, float, int, float, float, float, float, float]:
        m = self.model
        sparse = m.attention == "mla" and m.index_topk > 0
        main_b = m.num_layers * (m.kv_lora_rank + m.qk_rope_head_dim) * m.kv_dtype_bytes
        idx_b = m.num_layers * m.index_head_dim * m.kv_dtype_bytes
        return (m.linear_flops_per_token, m.attn_flops_per_pair, m.indexer_flops_per_pair,
                m.index_topk if sparse else 0, float(main_b), float(idx_b), float(m.kv_bytes_per_token),
                self.peak_flops * self.hw.decode_mfu, self.hw.hbm_bytes_s * self.hw.decode_mbu)

    def decode_step_s(self, batch: int, mean_context_tokens: float, weight_bytes: float) -> float:
        """A decode step of one (balanced) member, with the per-step overhead."""
        if batch <= 0:
            return 0.0
        return self.decode_member_s(batch, mean_context_tokens, weight_bytes) + self.hw.decode_step_overhead_s

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled
