"""Weight-only quantized linear layers on PyTorch's own CPU kernels.

Why these kernels: docs/decisions/cpu-weight-quantization.md (measured against fp32/bf16
dense, torchao and fbgemm's dynamic int8). Both kernels want bfloat16 activations (their
float32 paths are 5-30x slower), so inputs of any float dtype are cast to bfloat16 for the
matmul and the result is cast back: with `dtype="float32"` the residual stream and the KV stay
float32 and only the matmul inputs are rounded.

- `Int8Linear`: int8 weights `[N, K]` with one scale per output row (symmetric, absmax / 127),
  `torch._weight_int8pack_mm`. Also serves as an embedding table (`rows`), so a tied
  embedding / LM head is held once.
- `Int4Linear`: 4-bit codes in groups of `group_size` along K with a (scale, zero) pair per
  group, `w = (q - 8) * scale + zero`, `torch._weight_int4pack_mm_for_cpu`. GGUF Q4_0 / Q4_1
  blocks (32 values, `d * q + m`) map onto it exactly: scale = d, zero = m + 8d (rounded to
  bfloat16, as the kernel stores them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dualpath.core.errors import ModelLoadError, UserInputError
from dualpath.model.execution import Quantization
from dualpath.model.gguf_blocks import BLOCK, BlockQuantized
from dualpath.model.int4_layout import unpack as unpack_int4

INT4_GROUP = BLOCK  # the GGUF block size, so Q4 files map one to one
_ACT = torch.bfloat16


def int4_supported(n: int, k: int, group: int = INT4_GROUP) -> bool:
    """The int4 kernel needs N % 16 == 0 and K a multiple of the group size."""
    return n % 16 == 0 and k % group == 0


class _QuantLinear(nn.Module):
    """Shared forward: the quantized kernel for few rows (decode), and from `dense_from_rows`
    rows on (prefill) the weight dequantized on the fly into a dense bfloat16 matmul, which
    the CPU's bf16 GEMM runs several times faster than the kernels (measured crossovers in
    docs/decisions/cpu-weight-quantization.md). Nothing dequantized is kept."""

    in_features: int
    out_features: int
    dense_from_rows: int = 1 << 62

    def __init__(self, out_features: int, in_features: int, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.bias = bias

    def _matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor | None:
        """The weight `[N, K]` in bfloat16 exactly as the kernel sees it, or None."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if x2d.dtype != _ACT:
            x2d = x2d.to(_ACT)
        if not x2d.is_contiguous():
            x2d = x2d.contiguous()
        dense = self.dense_weight() if x2d.shape[0] >= self.dense_from_rows else None
        y = self._matmul(x2d) if dense is None else F.linear(x2d, dense)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Int8Linear(_QuantLinear):
    """int8 weight `[N, K]`, bfloat16 scale per row: `y = x @ (q * scale).T (+ bias)`."""

    qweight: torch.Tensor
    scales: torch.Tensor
    dense_from_rows = 48  # int8 -> bf16 is one cheap pass; the kernel loses from ~32-64 rows

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor,
                 bias: nn.Parameter | None = None) -> None:
        super().__init__(int(qweight.shape[0]), int(qweight.shape[1]), bias)
        self.register_buffer("qweight", qweight.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.to(_ACT).contiguous())

    @classmethod
    def from_float(cls, w: torch.Tensor, bias: nn.Parameter | None = None) -> Int8Linear:
        return cls(*_int8_rows(w), bias)

    @classmethod
    def from_value(cls, value: WeightValue, bias: nn.Parameter | None = None,
                   chunk_rows: int = 2048) -> Int8Linear:
        """`from_float(as_float(value))`, a few thousand rows at a time: the same codes and
        scales (quantization is per row), without a float32 copy of the whole weight (for
        SmolLM2's 49k x 576 embedding, 113 MB of fresh pages, a second of start-up)."""
        n, k = (int(value.shape[0]), int(value.shape[1]))
        q = torch.empty((n, k), dtype=torch.int8)
        scales = torch.empty(n, dtype=torch.float32)
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            rows = (value.row_range(start, stop) if isinstance(value, BlockQuantized)
                    else value[start:stop])
            q[start:stop], scales[start:stop] = _int8_rows(as_float(rows))
        return cls(q, scales, bias)

    def _matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x2d, self.qweight, self.scales)

    def dense_weight(self) -> torch.Tensor:
        return self.qweight.to(_ACT) * self.scales[:, None]

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Dequantized rows `ids` (an embedding lookup), float32 math, then `dtype`."""
        return (self.qweight[ids].float() * self.scales[ids].float()[..., None]).to(dtype)

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scales.float()[:, None]


class Int4Linear(_QuantLinear):
    """Packed 4-bit weight with per-group (scale, zero): `w = (q - 8) * scale + zero`."""

    packed: torch.Tensor
    scales_zeros: torch.Tensor
    dense_from_rows = 192  # unpacking costs ~2-5 ms per 1M weights; the kernel ~45 us per row

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int = INT4_GROUP, bias: nn.Parameter | None = None) -> None:
        """codes int `[N, K]` in 0..15; scales, zeros `[N, K / group_size]`."""
        n, k = int(codes.shape[0]), int(codes.shape[1])
        if not int4_supported(n, k, group_size):
            raise ModelLoadError(f"int4 kernel cannot hold a [{n}, {k}] weight "
                                 f"(needs N % 16 == 0 and K % {group_size} == 0)")
        super().__init__(n, k, bias)
        self.group_size = group_size
        packed = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
        self.register_buffer("packed", packed)
        sz = torch.stack((scales.float().t(), zeros.float().t()), dim=-1)  # [K/g, N, 2]
        self.register_buffer("scales_zeros", sz.to(_ACT).contiguous())

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int = INT4_GROUP,
                   bias: nn.Parameter | None = None) -> Int4Linear:
        """Asymmetric min/max quantization per group (what Q4_1 does)."""
        n, k = w.shape
        g = w.float().reshape(n, k // group_size, group_size)
        lo, hi = g.amin(dim=-1), g.amax(dim=-1)
        scales = ((hi - lo) / 15.0).clamp(min=1e-12)
        codes = torch.round((g - lo[..., None]) / scales[..., None]).clamp(0, 15)
        return cls(codes.reshape(n, k), scales, lo + 8.0 * scales, group_size, bias)

    @classmethod
    def from_blocks(cls, blocks: BlockQuantized, bias: nn.Parameter | None = None
                    ) -> Int4Linear:
        """GGUF Q4_0 / Q4_1 weights as they are (no requantization)."""
        if blocks.kind not in ("q4_0", "q4_1"):
            raise ModelLoadError(f"{blocks.kind} blocks are not 4-bit")
        scales = torch.from_numpy(blocks.scales)
        mins = (torch.from_numpy(blocks.mins) if blocks.mins is not None
                else -8.0 * scales)  # Q4_0: w = d * (q - 8), i.e. min = -8d
        codes = torch.from_numpy(blocks.codes.astype("int32"))
        return cls(codes, scales, mins + 8.0 * scales, BLOCK, bias)

    def _matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        return torch._weight_int4pack_mm_for_cpu(x2d, self.packed, self.group_size,
                                                 self.scales_zeros)

    def dense_weight(self) -> torch.Tensor | None:
        codes = unpack_int4(self.packed, self.out_features, self.in_features)
        if codes is None:
            return None
        n, k, g = self.out_features, self.in_features, self.group_size
        scales = self.scales_zeros[..., 0].t().float()[..., None]  # [N, K/g, 1]
        # the kernel computes (q - 8) * scale + zero in float32: the same here, then bf16
        offsets = self.scales_zeros[..., 1].t().float()[..., None] - 8.0 * scales
        w = torch.addcmul(offsets, codes.reshape(n, k // g, g).float(), scales)
        return w.reshape(n, k).to(_ACT)


class QuantEmbedding(nn.Module):
    """Token embedding read from an `Int8Linear` table (shared with a tied LM head)."""

    def __init__(self, table: Int8Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.table = table
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table.rows(ids, self.dtype)


WeightValue = torch.Tensor | BlockQuantized


def _int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 codes and float32 scales (absmax / 127) of `w`."""
    w = w.float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    # round with the scale the kernel will use (bf16), so codes and scale agree
    scales = scales.to(_ACT).float()
    return torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


def as_float(value: WeightValue) -> torch.Tensor:
    return value.dequantize() if isinstance(value, BlockQuantized) else value


def quantized_linear(value: WeightValue, mode: Quantization,
                     bias: nn.Parameter | None = None) -> _QuantLinear:
    """The quantized layer for one linear weight `[N, K]` in `mode` ("int8" or "int4").

    int4 takes GGUF Q4 blocks as they are and quantizes anything else with min/max groups;
    a shape the int4 kernel cannot hold falls back to int8.
    """
    n, k = (value.shape if isinstance(value, BlockQuantized)
            else (int(value.shape[0]), int(value.shape[1])))
    if mode == "int4" and int4_supported(n, k):
        if isinstance(value, BlockQuantized) and value.bits == 4:
            return Int4Linear.from_blocks(value, bias)
        return Int4Linear.from_float(as_float(value), bias=bias)
    if mode not in ("int8", "int4"):
        raise UserInputError(f"quantized_linear needs int8 or int4, got {mode!r}")
    return Int8Linear.from_value(value, bias)
