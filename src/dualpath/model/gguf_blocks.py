"""GGUF block-quantized tensors kept in their quantized form (codes + per-block scales).

ggml's Q4_0, Q4_1 and Q8_0 quantize each row in blocks of 32 values:

- Q4_0: `{f16 d; u8 qs[16]}`, `w = d * (q - 8)`, q in 0..15;
- Q4_1: `{f16 d; f16 m; u8 qs[16]}`, `w = d * q + m`, q in 0..15;
- Q8_0: `{f16 d; i8 qs[32]}`, `w = d * q`.

In a Q4 block byte j holds value j in its low nibble and value j + 16 in its high nibble.
`BlockQuantized` holds codes `[N, K]` and scales/mins `[N, K / 32]`, i.e. exactly what the
file says, so the int4 kernel can use Q4 weights as they are (`quant.Int4Linear.from_blocks`)
instead of dequantizing and quantizing again. Rows can be permuted like the float tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dualpath.core.errors import ModelLoadError

BLOCK = 32
# ggml type ids (gguf.GGMLQuantizationType) of the formats kept quantized.
_Q4_0, _Q4_1, _Q8_0 = 2, 3, 8
KEPT_TYPES = {_Q4_0: "q4_0", _Q4_1: "q4_1", _Q8_0: "q8_0"}


@dataclass(frozen=True)
class BlockQuantized:
    """One GGUF tensor `[N, K]` in block form. `kind` in q4_0 | q4_1 | q8_0.

    codes: uint8 0..15 (Q4) or int8 (Q8) `[N, K]`; scales: float32 `[N, K / 32]`;
    mins: float32 `[N, K / 32]` for Q4_1, else None. `w = scales * codes + mins` for Q4_1,
    `scales * (codes - 8)` for Q4_0, `scales * codes` for Q8_0.
    """

    kind: str
    codes: np.ndarray
    scales: np.ndarray
    mins: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    @property
    def bits(self) -> int:
        return 8 if self.kind == "q8_0" else 4

    def dequantize(self) -> torch.Tensor:
        """The float32 tensor `[N, K]` (equal to `gguf.quants.dequantize` of the file's bytes)."""
        n, k = self.shape
        codes = self.codes.astype(np.float32).reshape(n, k // BLOCK, BLOCK)
        if self.kind == "q4_0":
            codes -= 8.0
        w = codes * self.scales[..., None]
        if self.mins is not None:
            w += self.mins[..., None]
        return torch.from_numpy(np.ascontiguousarray(w.reshape(n, k)))

    def row_range(self, start: int, stop: int) -> BlockQuantized:
        """Rows `start:stop` (views, no copy)."""
        return BlockQuantized(self.kind, self.codes[start:stop], self.scales[start:stop],
                              None if self.mins is None else self.mins[start:stop])

    def permute_rows(self, permute: Callable[[np.ndarray], np.ndarray]) -> BlockQuantized:
        """Apply a row permutation (a function of a rows-first array) to every part."""
        return BlockQuantized(self.kind, permute(self.codes), permute(self.scales),
                              None if self.mins is None else permute(self.mins))


def from_gguf_data(data: np.ndarray, ggml_type: int, shape: tuple[int, int]) -> BlockQuantized:
    """Split the raw bytes of a Q4_0 / Q4_1 / Q8_0 tensor of `shape` (N, K) into its parts."""
    kind = KEPT_TYPES.get(ggml_type)
    if kind is None:
        raise ModelLoadError(f"GGUF type {ggml_type} cannot be kept quantized")
    n, k = shape
    if k % BLOCK:
        raise ModelLoadError(f"a {kind} tensor of shape {shape} is not a whole number of blocks")
    head = 4 if kind == "q4_1" else 2
    body = BLOCK if kind == "q8_0" else BLOCK // 2
    blocks = np.ascontiguousarray(data, dtype=np.uint8).reshape(n, k // BLOCK, head + body)
    scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    mins = (blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
            if kind == "q4_1" else None)
    qs = blocks[..., head:]
    if kind == "q8_0":
        codes = qs.copy().view(np.int8).reshape(n, k)
    else:
        codes = np.concatenate((qs & 0x0F, qs >> 4), axis=-1).reshape(n, k)
    return BlockQuantized(kind, codes, scales, mins)
