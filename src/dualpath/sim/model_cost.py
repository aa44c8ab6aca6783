"""Model cost presets: FLOPs, weight bytes and KV bytes per token, from model configs alone.

Three presets (`MODEL_PRESETS`): `ds-660b` (DeepSeek-V3.2: MLA latent KV, DeepSeek Sparse
Attention with its lightning indexer), `ds-27b` (the downscaled V3.2 of DESIGN.md section 4)
and `qwen-32b` (Qwen2.5-32B, GQA, FP16 KV). Architecture numbers come from the models'
Hugging Face `config.json` files (deepseek-ai/DeepSeek-V3.2-Exp, Qwen/Qwen2.5-32B).

Counting conventions (the ones that reproduce the paper's cache-compute table):
- Linear FLOPs per token = 2 x active non-embedding parameters (the LM head is computed
  for the last token only, so it is left out of prefill).
- MLA attention runs in the weight-absorbed (MQA-like) form: per (query, key) pair and head
  the score costs 2 x (kv_lora_rank + rope_dim) and the value product 2 x kv_lora_rank.
  Sparse attention attends to at most `index_topk` keys; the indexer scores every key
  (2 x index_heads x index_head_dim per pair).
- GQA attention costs 4 x num_heads x head_dim per pair (QK^T and PV).
- KV bytes per token per layer: MLA stores the latent (kv_lora_rank) plus the RoPE key
  (rope_dim) and the indexer key (index_head_dim), one byte each in FP8 (per-tile scale
  factors are ignored); GQA stores 2 x kv_heads x head_dim x dtype bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from dualpath.core.errors import UserInputError
from dualpath.core.frozen import reduce_frozen
from dualpath.core.model_config import ModelConfig


@dataclass(frozen=True)
class ModelCost:
    """Architecture facts the simulator needs. Derived costs are properties / methods."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    vocab_size: int
    # attention: "mla" (DeepSeek) or "gqa" (Qwen)
    attention: str
    head_dim: int = 128  # gqa
    num_kv_heads: int = 0  # gqa
    q_lora_rank: int = 0  # mla; 0 = no Q-LoRA
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    index_heads: int = 0  # DSA indexer; 0 = dense attention
    index_head_dim: int = 0
    index_topk: int = 0
    # FFN
    intermediate_size: int = 0  # dense FFN width
    num_dense_layers: int = 0  # leading dense layers (MoE models); all layers if no experts
    num_routed_experts: int = 0
    num_active_experts: int = 0
    num_shared_experts: int = 0
    moe_intermediate_size: int = 0
    kv_dtype_bytes: int = 1
    weight_dtype_bytes: int = 1
    compute_dtype: str = "fp8"  # which tensor-core peak applies
    # "ep": attention data-parallel, routed experts sharded over the GPUs of one expert-
    # parallel group (DeepSeek); "dp": every GPU holds the whole model (Qwen 32B).
    parallelism: str = "ep"
    # GPUs per expert-parallel group (the deployment unit whose forwards run in lockstep),
    # per role; 1 under "dp". A cluster is a number of such groups (instances).
    prefill_ep_gpus: int = 1
    decode_ep_gpus: int = 1

    # -- parameters --------------------------------------------------------------------
    @cached_property
    def attention_params_per_layer(self) -> int:
        h = self.hidden_size
        if self.attention == "gqa":
            q = h * self.num_heads * self.head_dim
            kv = 2 * h * self.num_kv_heads * self.head_dim
            return q + kv + self.num_heads * self.head_dim * h
        qk_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        if self.q_lora_rank:
            q = h * self.q_lora_rank + self.q_lora_rank * self.num_heads * qk_dim
            iq_in = self.q_lora_rank
        else:
            q = h * self.num_heads * qk_dim
            iq_in = h
        kv = h * (self.kv_lora_rank + self.qk_rope_head_dim)
        kv += self.kv_lora_rank * self.num_heads * (self.qk_nope_head_dim + self.v_head_dim)
        out = self.num_heads * self.v_head_dim * h
        indexer = 0
        if self.index_heads:
            indexer = iq_in * self.index_heads * self.index_head_dim + h * self.index_head_dim
            indexer += h * self.index_heads
        return q + kv + out + indexer

    @cached_property
    def _ffn(self) -> tuple[int, int, int]:
        """(active FFN params per token, total FFN params, expert params) over all layers."""
        h = self.hidden_size
        dense = 3 * h * self.intermediate_size
        if not self.num_routed_experts:
            n = self.num_layers * dense
            return n, n, 0
        moe_layers = self.num_layers - self.num_dense_layers
        expert = 3 * h * self.moe_intermediate_size
        router = h * self.num_routed_experts
        active = self.num_dense_layers * dense + moe_layers * (
            (self.num_active_experts + self.num_shared_experts) * expert + router
        )
        routed = moe_layers * self.num_routed_experts * expert
        total = self.num_dense_layers * dense + moe_layers * (
            self.num_shared_experts * expert + router
        ) + routed
        return active, total, routed

    @property
    def active_params(self) -> int:
        return self.num_layers * self.attention_params_per_layer + self._ffn[0]

    @property
    def total_params(self) -> int:
        return self.num_layers * self.attention_params_per_layer + self._ffn[1] + 2 * self.vocab_size * self.hidden_size

    def weight_bytes_per_gpu(self, ep_gpus: int) -> float:
        """HBM taken by weights on one GPU: routed experts sharded over its EP group's
        `ep_gpus` GPUs (everything else replicated)."""
        total = self.total_params * self.weight_dtype_bytes
        if self.parallelism != "ep" or not self.num_routed_experts:
            return float(total)
        routed = self._ffn[2] * self.weight_dtype_bytes
        return float(total - routed + routed / max(1, ep_gpus))

    # -- FLOPs -------------------------------------------------------------------------
    @cached_property
    def linear_flops_per_token(self) -> float:
        return 2.0 * self.active_params

    @cached_property
    def attn_flops_per_pair(self) -> float:
        """FLOPs of main attention per (query token, attended key), all layers."""
        if self.attention == "gqa":
            return 4.0 * self.num_heads * self.head_dim * self.num_layers
        per_head = 2 * (self.kv_lora_rank + self.qk_rope_head_dim) + 2 * self.kv_lora_rank
        return float(per_head * self.num_heads * self.num_layers)

    @cached_property
    def indexer_flops_per_pair(self) -> float:
        return 2.0 * self.index_heads * self.index_head_dim * self.num_layers

    def attention_flops(self, cached_tokens: int, new_tokens: int) -> float:
        """Attention (+ indexer) FLOPs to prefill new_tokens after cached_tokens (causal)."""
        if new_tokens <= 0:
            return 0.0
        c, n = cached_tokens, new_tokens
        # Sum over query i = 1..n of keys (c + i).
        pairs = n * c + n * (n + 1) / 2.0
        if self.index_topk:
            k = self.index_topk
            # keys attended by query i: min(c + i, k)
            lo = max(0, min(n, k - c))  # queries with c + i <= k
            dense_part = lo * c + lo * (lo + 1) / 2.0
            attended = dense_part + (n - lo) * k
            return attended * self.attn_flops_per_pair + pairs * self.indexer_flops_per_pair
        return pairs * self.attn_flops_per_pair

    def prefill_flops(self, cached_tokens: int, new_tokens: int) -> float:
        return new_tokens * self.linear_flops_per_token + self.attention_flops(cached_tokens, new_tokens)

    def decode_flops(self, context_tokens: int) -> float:
        """FLOPs of one decode step of one request with context_tokens already in KV."""
        return self.linear_flops_per_token + self.attention_flops(context_tokens, 1)

    # -- bytes -------------------------------------------------------------------------
    @cached_property
    def kv_bytes_per_token_per_layer(self) -> int:
        if self.attention == "gqa":
            return 2 * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes
        return (self.kv_lora_rank + self.qk_rope_head_dim + self.index_head_dim) * self.kv_dtype_bytes

    @cached_property
    def kv_bytes_per_token(self) -> int:
        return self.num_layers * self.kv_bytes_per_token_per_layer

    def decode_kv_read_bytes(self, context_tokens: int) -> float:
        """KV bytes one decode step reads for one request (sparse attention reads top-k)."""
        if self.attention == "mla" and self.index_topk:
            main = (self.kv_lora_rank + self.qk_rope_head_dim) * self.kv_dtype_bytes
            idx = self.index_head_dim * self.kv_dtype_bytes
            return self.num_layers * (min(context_tokens, self.index_topk) * main + context_tokens * idx)
        return float(context_tokens * self.kv_bytes_per_token)

    def __reduce__(self) -> tuple[object, ...]:
        return reduce_frozen(self)  # pickle/copy, also when compiled


# deepseek-ai/DeepSeek-V3.2-Exp config.json (same dims as V3 plus the indexer).
DS_660B = ModelCost(
    name="ds-660b", num_layers=61, hidden_size=7168, num_heads=128, vocab_size=129280,
    attention="mla", q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
    qk_rope_head_dim=64, v_head_dim=128, index_heads=64, index_head_dim=128, index_topk=2048,
    intermediate_size=18432, num_dense_layers=3, num_routed_experts=256, num_active_experts=8,
    num_shared_experts=1, moe_intermediate_size=2048, kv_dtype_bytes=1, weight_dtype_bytes=1,
    compute_dtype="fp8", parallelism="ep",
    # The paper's DS 660B deployment unit is 2P4D (DESIGN.md section 4: EP + DP attention on
    # nodes of 8 GPUs): one EP group of 2 prefill nodes and one of 4 decode nodes; its scale
    # experiment (48P96D) is 24 such instances.
    prefill_ep_gpus=16, decode_ep_gpus=32,
)
# DESIGN.md section 4 ("DS 27B"); MLA dims as V3.2 (not stated there: an assumption).
DS_27B = ModelCost(
    name="ds-27b", num_layers=30, hidden_size=2560, num_heads=32, vocab_size=129280,
    attention="mla", q_lora_rank=0, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
    v_head_dim=128, index_heads=32, index_head_dim=64, index_topk=1024, intermediate_size=12288,
    num_dense_layers=1, num_routed_experts=72, num_active_experts=6, num_shared_experts=2,
    moe_intermediate_size=1536, kv_dtype_bytes=1, weight_dtype_bytes=1, compute_dtype="fp8",
    parallelism="ep",
    # DESIGN.md section 4: DS 27B runs 1P1D, so one EP group is one node of 8 GPUs per role.
    prefill_ep_gpus=8, decode_ep_gpus=8,
)
# Qwen/Qwen2.5-32B config.json; BF16 weights, FP16 KV (DESIGN.md section 1).
QWEN_32B = ModelCost(
    name="qwen-32b", num_layers=64, hidden_size=5120, num_heads=40, vocab_size=152064,
    attention="gqa", head_dim=128, num_kv_heads=8, intermediate_size=27648,
    kv_dtype_bytes=2, weight_dtype_bytes=2, compute_dtype="bf16", parallelism="dp",
)

MODEL_PRESETS: dict[str, ModelCost] = {m.name: m for m in (DS_660B, DS_27B, QWEN_32B)}


def model_cost(name: str) -> ModelCost:
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        raise UserInputError(
            f"unknown model preset {name!r}; choose one of: {', '.join(MODEL_PRESETS)}"
        ) from None


def model_cost_of_config(config: ModelConfig) -> ModelCost:
    """The cost preset of a runtime model (`dualpath.core.model_config.ModelConfig`: a dense
    Llama / Qwen2 decoder with GQA), so the simulator can model our own runtime cluster."""
    return ModelCost(
        name=config.name, num_layers=config.num_layers, hidden_size=config.hidden_size,
        num_heads=config.num_heads, vocab_size=config.vocab_size, attention="gqa",
        head_dim=config.head_dim, num_kv_heads=config.num_kv_heads,
        intermediate_size=config.intermediate_size, kv_dtype_bytes=config.kv_dtype_bytes,
        weight_dtype_bytes=config.kv_dtype_bytes, compute_dtype="bf16", parallelism="dp",
    )
