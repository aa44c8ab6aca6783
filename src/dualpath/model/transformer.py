"""Decoder-only transformer (Llama / Qwen2 / SmolLM2) written for serving with external KV.

Parameter names follow Hugging Face's `LlamaForCausalLM` minus the leading "model." so that
checkpoints (and `transformers` models in tests) map one to one.

Two calls, both under `torch.inference_mode()`:

- `prefill(token_ids, start_pos, past, ...)` computes only the *new* tokens; the KV of the
  `start_pos` tokens before them comes from `past`: None, a list of per-layer `[T_past, 2, H, D]`
  tensors (prefix loaded whole) or a layer source — a callable `source(layer) -> [T_past, 2, H, D]`
  invoked just before that layer runs, so a loader can still be filling later layers
  (layerwise prefill). `on_layer_kv(layer, kv_new)` fires as soon as a layer is done so its new
  KV can be streamed on. Chunked prefill is repeated calls. `prefill_batch` does the same for
  several sequences in one pass (a prefill engine's batch).
- `decode(last_token_ids, caches)` runs one step for a batch of sequences of any lengths,
  writing each step's KV into their `KVSequence`s. Matmuls run over the batch; attention runs
  per sequence over views of where its KV lives (`paged_attention.py`): nothing is padded or
  gathered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from dualpath.core.errors import UserInputError
from dualpath.core.model_config import ModelConfig
from dualpath.model.execution import Quantization, check_quantization
from dualpath.model.kv_bytes import torch_dtype
from dualpath.model.kv_sequence import KVSequence
from dualpath.model.paged_attention import decode_attention
from dualpath.model.quant import Int8Linear, QuantEmbedding, WeightValue, as_float, quantized_linear
from dualpath.model.rope import RotaryEmbedding, apply_rope

LayerSource = Callable[[int], torch.Tensor]
Past = Sequence[torch.Tensor] | LayerSource | None
OnLayerKV = Callable[[int, torch.Tensor], None]
LogitsMode = Literal["last", "all", "none"]
_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


# init_random's gains (see there): sharper attention and larger residual updates.
_RANDOM_GAIN = {"q_proj": 2.0, "k_proj": 2.0, "o_proj": 6.0, "down_proj": 6.0}


@dataclass(frozen=True)
class PrefillOutput:
    """logits: `[V]` ("last"), `[T_new, V]` ("all") or None ("none"), float32.

    new_kv: per layer, the new tokens' KV `[T_new, 2, H, D]` in `kv_dtype`.
    """

    logits: torch.Tensor | None
    new_kv: list[torch.Tensor]


@dataclass(frozen=True)
class PrefillRequest:
    """One sequence of a `prefill_batch` call; fields as in `Transformer.prefill`."""

    token_ids: Sequence[int] | torch.Tensor
    start_pos: int = 0
    past: Past = None
    on_layer_kv: OnLayerKV | None = None
    logits: LogitsMode = "last"


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        bias = c.attention_bias
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """x `[N, hidden]` -> q `[N, Hq, D]` (RoPE'd) and kv `[N, 2, Hkv, D]` (K RoPE'd)."""
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        # one elementwise RoPE pass over q and k together (same math, fewer small ops)
        qk = apply_rope(torch.cat((q, k), dim=1), cos, sin)
        return qk[:, : self.num_heads], torch.stack((qk[:, self.num_heads :], v), dim=1)


class MLP(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class Transformer(nn.Module):
    """The model. Build with `Transformer(config)`; fill with `load_weights` or `init_random`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.dtype = torch_dtype(config.kv_dtype)
        self.quantization: Quantization = "none"
        with torch.device("meta"):
            # given an empty weight, Embedding skips its random init (whose normal_ on meta
            # imports torch._dynamo: 1.5 s of every engine's start-up)
            self.embed_tokens: nn.Module = nn.Embedding(
                config.vocab_size, config.hidden_size,
                _weight=torch.empty(config.vocab_size, config.hidden_size))
            self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
            self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.lm_head: nn.Module = nn.Linear(config.hidden_size, config.vocab_size,
                                                bias=False)
        # cast while still on meta, then allocate: untouched pages cost no memory, so weights
        # that loading replaces (or quantizes) are never resident in the wrong dtype
        self.to(self.dtype)
        self.to_empty(device="cpu")
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = RotaryEmbedding(config)
        self.eval()
        self.requires_grad_(False)

    @property
    def decoder_layers(self) -> list[DecoderLayer]:
        return [cast(DecoderLayer, layer) for layer in self.layers]

    # ---- weights -------------------------------------------------------------------------

    def init_random(self, seed: int) -> None:
        """Deterministic random weights whose greedy output varies like text and depends on
        the whole context (outputs O(1), so greedy choices are far from ties).

        With every matrix at 1/sqrt(fan_in) the residual stream stays close to the current
        token's embedding and a tied head echoes one token forever, so tests comparing
        outputs could not see wrong KV. Larger attention logits (q, k) and residual updates
        (o, down) make each token's output depend on its context.
        """
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                vals = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            elif name.endswith("bias"):
                vals = 0.1 * torch.randn(p.shape, generator=gen)
            elif p.dim() == 2 and name != "embed_tokens.weight":
                gain = _RANDOM_GAIN.get(name.rsplit(".", 2)[-2], 1.0)
                vals = gain * torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5
            else:
                vals = torch.randn(p.shape, generator=gen)
            p.data.copy_(vals.to(p.dtype))

    def load_weights(self, tensors: Mapping[str, WeightValue] | Iterable[tuple[str, WeightValue]],
                     quantization: Quantization = "none") -> None:
        """Put HF-named tensors ("model." prefix optional) in; every parameter must be given.

        Values are float tensors or GGUF `BlockQuantized` ones, consumed one at a time (an
        iterator of pairs keeps only one dequantized tensor alive). With `quantization`
        int8 / int4 the linear weights become `quant` layers as they arrive (the embedding /
        LM head always int8) and their float parameter is never filled.
        """
        check_quantization(quantization)
        items = tensors.items() if isinstance(tensors, Mapping) else tensors
        own = dict(self.named_parameters())
        quantizable = self._quantizable_names() if quantization != "none" else set()
        seen: set[str] = set()
        for raw_name, value in items:
            name = raw_name.removeprefix("model.")
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            if name not in own:
                if "rotary_emb" in name:
                    continue
                raise UserInputError(f"checkpoint tensor {raw_name!r} has no place in the model")
            if tuple(own[name].shape) != tuple(value.shape):
                raise UserInputError(
                    f"checkpoint tensor {raw_name!r} has shape {tuple(value.shape)}, "
                    f"model expects {tuple(own[name].shape)}"
                )
            if name in quantizable:
                self._set_quantized(name, value, quantization)
            else:
                # rebinding (not copy_) avoids touching a second full-size buffer
                own[name].data = as_float(value).to(own[name].dtype).contiguous()
            seen.add(name)
        if self.config.tie_word_embeddings:
            seen.add("lm_head.weight")
        missing = sorted(set(own) - seen)
        if missing:
            raise UserInputError(f"checkpoint lacks tensors: {', '.join(missing[:5])}")
        self.quantization = quantization

    def quantize(self, quantization: Quantization) -> None:
        """Quantize the float weights in place (for weights made by `init_random`)."""
        check_quantization(quantization)
        if self.quantization != "none":
            raise UserInputError(f"model is already quantized ({self.quantization})")
        if quantization == "none":
            return
        own = dict(self.named_parameters())
        for name in sorted(self._quantizable_names()):
            if name in own:
                self._set_quantized(name, own[name].data, quantization)
        self.quantization = quantization

    def _quantizable_names(self) -> set[str]:
        names = {"embed_tokens.weight", "lm_head.weight"}
        for i in range(self.config.num_layers):
            names.update(f"layers.{i}.{part}.weight" for part in _LINEARS)
        return names

    def _set_quantized(self, name: str, value: WeightValue, quantization: Quantization) -> None:
        if name in ("embed_tokens.weight", "lm_head.weight"):
            table = Int8Linear.from_value(value)
            if name == "lm_head.weight" or self.config.tie_word_embeddings:
                self.lm_head = table
            if name == "embed_tokens.weight":
                self.embed_tokens = QuantEmbedding(table, self.dtype)
            return
        path, attr = name.removesuffix(".weight").rsplit(".", 1)
        parent = self.get_submodule(path)
        old = getattr(parent, attr)
        setattr(parent, attr, quantized_linear(value, quantization, old.bias))

    def weight_bytes(self) -> int:
        """Bytes of all weights as held (shared tensors counted once)."""
        seen: dict[int, int] = {}
        for t in [*self.parameters(), *self.buffers()]:
            seen[t.data_ptr()] = t.numel() * t.element_size()
        return sum(seen.values())

    # ---- serving -------------------------------------------------------------------------

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden)).float()

    @torch.inference_mode()
    def prefill(
        self,
        token_ids: Sequence[int] | torch.Tensor,
        start_pos: int = 0,
        past: Past = None,
        on_layer_kv: OnLayerKV | None = None,
        logits: LogitsMode = "last",
    ) -> PrefillOutput:
        """Compute the new tokens `token_ids` at positions `start_pos ..` given prefix KV `past`."""
        return self.prefill_batch(
            [PrefillRequest(token_ids, start_pos, past, on_layer_kv, logits)])[0]

    @torch.inference_mode()
    def prefill_batch(self, requests: Sequence[PrefillRequest]) -> list[PrefillOutput]:
        """Prefill several sequences in one forward pass (matmuls over all their new tokens,
        attention per sequence). Layer sources of layer i are all called, in request order,
        just before layer i runs; `on_layer_kv` callbacks fire right after it."""
        if not requests:
            return []
        ids_list, cos_list, sin_list, masks = [], [], [], []
        for r in requests:
            ids = torch.as_tensor(r.token_ids, dtype=torch.long).reshape(-1)
            n_new = ids.shape[0]
            if n_new == 0:
                raise UserInputError("prefill needs at least one new token")
            if r.past is None and r.start_pos != 0:
                raise UserInputError(f"start_pos={r.start_pos} but no past KV was given")
            if not callable(r.past) and r.past is not None \
                    and len(r.past) != self.config.num_layers:
                raise UserInputError(
                    f"past has {len(r.past)} layers, model has {self.config.num_layers}")
            cos, sin = self.rope.cos_sin(torch.arange(r.start_pos, r.start_pos + n_new))
            ids_list.append(ids)
            cos_list.append(cos)
            sin_list.append(sin)
            # query j (absolute position start_pos + j) sees keys 0 .. start_pos + j; without a
            # prefix that is plain causal attention, whose kernel skips masked tiles (~2x faster)
            masks.append(None if r.start_pos == 0 else torch.ones(
                n_new, r.start_pos + n_new, dtype=torch.bool).tril(diagonal=r.start_pos))
        sizes = [int(t.shape[0]) for t in ids_list]
        cos, sin = torch.cat(cos_list), torch.cat(sin_list)
        x = self.embed_tokens(torch.cat(ids_list))
        new_kv: list[list[torch.Tensor]] = [[] for _ in requests]
        for i, layer in enumerate(self.decoder_layers):
            h = layer.input_layernorm(x)
            q, kv = layer.self_attn.qkv(h, cos, sin)
            kv_parts = kv.split(sizes)
            attn = []
            for r, q_r, kv_r, mask in zip(requests, q.split(sizes), kv_parts, masks, strict=True):
                kv_all = kv_r
                if r.past is not None:
                    prefix = r.past(i) if callable(r.past) else r.past[i]
                    if prefix.shape[0] != r.start_pos:
                        raise UserInputError(f"layer {i}: past has {prefix.shape[0]} tokens, "
                                             f"start_pos is {r.start_pos}")
                    kv_all = torch.cat((prefix.to(kv.dtype), kv_r), dim=0)
                attn.append(self._attend(q_r, kv_all, mask))
            x = x + layer.self_attn.o_proj(torch.cat(attn) if len(attn) > 1 else attn[0])
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            for b, r in enumerate(requests):
                new_kv[b].append(kv_parts[b])
                if r.on_layer_kv is not None:
                    r.on_layer_kv(i, kv_parts[b])
        outputs = []
        offset = 0
        for b, r in enumerate(requests):
            rows = x[offset : offset + sizes[b]]
            offset += sizes[b]
            out = None if r.logits == "none" else (
                self._logits(rows[-1:])[0] if r.logits == "last" else self._logits(rows))
            outputs.append(PrefillOutput(logits=out, new_kv=new_kv[b]))
        return outputs

    def _attend(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None
                ) -> torch.Tensor:
        """q `[N, Hq, D]`, kv `[T, 2, Hkv, D]`, mask `[N, T]` (None = causal) -> `[N, Hq*D]`."""
        qh = q.transpose(0, 1).unsqueeze(0)
        k = kv[:, 0].transpose(0, 1).unsqueeze(0)
        v = kv[:, 1].transpose(0, 1).unsqueeze(0)
        o = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask, is_causal=mask is None,
                                           enable_gqa=True)
        return o[0].transpose(0, 1).reshape(q.shape[0], -1)

    @torch.inference_mode()
    def decode(self, last_token_ids: Sequence[int] | torch.Tensor,
               caches: Sequence[KVSequence]) -> torch.Tensor:
        """One decode step for B sequences: token b sits at position `caches[b].num_tokens`.

        Writes each sequence's new KV and commits one token to it. Returns logits `[B, V]`.
        """
        ids = torch.as_tensor(last_token_ids, dtype=torch.long).reshape(-1)
        batch = ids.shape[0]
        if batch != len(caches):
            raise UserInputError(f"{batch} tokens but {len(caches)} caches")
        positions = [c.num_tokens for c in caches]
        cos, sin = self.rope.cos_sin(torch.tensor(positions))
        x = self.embed_tokens(ids)
        for i, layer in enumerate(self.decoder_layers):
            h = layer.input_layernorm(x)
            q, kv = layer.self_attn.qkv(h, cos, sin)
            attn = []
            for b, cache in enumerate(caches):
                cache.write(i, positions[b], kv[b : b + 1])
                attn.append(decode_attention(q[b], cache.segments(i, positions[b] + 1)))
            o = attn[0].unsqueeze(0) if batch == 1 else torch.stack(attn)
            x = x + layer.self_attn.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        for cache in caches:
            cache.commit(1)
        return self._logits(x)
