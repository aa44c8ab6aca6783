"""A fast, validating reader of GGUF files (llama.cpp's checkpoint format), torch-free.

`gguf.GGUFReader` builds a numpy view per metadata value, which for a tokenizer of 49k
tokens and 49k merges is ~250k memmap slices: 4 s of CPU per process on a 2-core machine,
paid by the scheduler and by every engine at start-up. This reader parses the same header
with `struct` over one `mmap` (about 0.1 s) and hands out the tensors' bytes as numpy views
of that map, laid out exactly as `GGUFReader` lays them out (so `gguf.quants.dequantize`
takes them as they are). Every length, count, type and offset is checked against the file:
a truncated or corrupt file is a `ModelLoadError`, never an exception from deep inside.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualpath.core.errors import ModelLoadError

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# Metadata value types (gguf.md): id -> struct format of one scalar.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_MAX_DIMS = 8  # ggml's GGML_MAX_DIMS is 4; a little headroom, and a bound on garbage
# Tensor types GGUFReader exposes with their own element dtype; every other type comes as
# raw bytes `[rows..., bytes per row]` (block-quantized, bf16).
_TYPED = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32,
          27: np.int64, 28: np.float64}


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor: `shape` in ggml order (fastest dimension first, as GGUFReader's
    `shape`), `tensor_type` the ggml type id, `data` a read-only view of its bytes."""

    name: str
    shape: tuple[int, ...]
    tensor_type: int
    data: np.ndarray


class _Cursor:
    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def fail(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path}: not a valid GGUF file ({what} at byte {self.pos})")

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise self.fail("truncated")
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        if n > len(self.buf) - self.pos:
            raise self.fail(f"string of {n} bytes runs past the end")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("string is not UTF-8") from None

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise self.fail(f"unknown value type {vtype}")
        if depth > 4:
            raise self.fail("arrays nested too deep")
        item_type = self.unpack("I")
        count = self.unpack("Q")
        if count > len(self.buf) - self.pos:  # every item takes at least one byte
            raise self.fail(f"array of {count} items runs past the end")
        if item_type in _NUMPY:
            dtype = np.dtype(_NUMPY[item_type]).newbyteorder("<")
            size = count * dtype.itemsize
            if self.pos + size > len(self.buf):
                raise self.fail("array runs past the end")
            items = np.frombuffer(self.buf, dtype, count, self.pos).tolist()
            self.pos += size
            return items
        if item_type == _STRING:
            return self._strings(count)
        return [self.value(item_type, depth + 1) for _ in range(count)]

    def _strings(self, count: int) -> list[str]:
        """`count` strings (a tokenizer's vocabulary and merges: the hot loop of a header)."""
        buf, end, pos = self.buf, len(self.buf), self.pos
        length = _U64.unpack_from
        out = []
        try:
            for _ in range(count):
                (n,) = length(buf, pos)
                pos += 8
                if n > end - pos:
                    raise self.fail(f"string of {n} bytes runs past the end")
                out.append(str(buf[pos:pos + n], "utf-8"))
                pos += n
        except struct.error:
            self.pos = pos
            raise self.fail("truncated") from None
        except UnicodeDecodeError:
            self.pos = pos
            raise self.fail("string is not UTF-8") from None
        self.pos = pos
        return out


class GGUFFile:
    """`GGUFFile(path)`: `.fields` (metadata name -> value: int/float/bool/str or a list),
    `.tensors` (list of `GGUFTensor`, file order), `.alignment`, `.data_offset`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
            raise ModelLoadError(f"cannot read GGUF file {self.path}: {exc}") from exc
        buf = memoryview(self._map)
        cur = _Cursor(buf, self.path)
        if bytes(buf[:4]) != _MAGIC:
            raise cur.fail("no GGUF magic")
        cur.pos = 4
        version = cur.unpack("I")
        if version not in (2, 3):
            raise cur.fail(f"version {version} (only 2 and 3 are read)")
        n_tensors, n_fields = cur.unpack("Q"), cur.unpack("Q")
        if n_tensors > len(buf) or n_fields > len(buf):
            raise cur.fail("counts larger than the file")
        self.fields: dict[str, Any] = {}
        for _ in range(n_fields):
            name = cur.string()
            if name in self.fields:
                raise cur.fail(f"metadata key {name!r} twice")
            self.fields[name] = cur.value(cur.unpack("I"))
        infos = [self._tensor_info(cur) for _ in range(n_tensors)]
        alignment = self.fields.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise cur.fail(f"general.alignment {alignment!r} is not a power of two")
        self.alignment = alignment
        self.data_offset = -(-cur.pos // alignment) * alignment
        self.tensors = [self._tensor(cur, *info) for info in infos]
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise cur.fail("two tensors share a name")

    @staticmethod
    def _tensor_info(cur: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
        name = cur.string()
        n_dims = cur.unpack("I")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions")
        dims = tuple(cur.unpack("Q") for _ in range(n_dims))
        return name, dims, cur.unpack("I"), cur.unpack("Q")

    def _tensor(self, cur: _Cursor, name: str, dims: tuple[int, ...], ggml_type: int,
                offset: int) -> GGUFTensor:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise cur.fail(f"tensor {name!r} has unknown type {ggml_type}") from None
        if dims[0] % block:
            raise cur.fail(f"tensor {name!r}: row of {dims[0]} is not whole blocks of {block}")
        rows = 1
        for d in dims[1:]:
            rows *= d
        row_bytes = dims[0] // block * type_size
        start = self.data_offset + offset
        if offset % self.alignment or start + rows * row_bytes > len(self._map):
            raise cur.fail(f"tensor {name!r} lies outside the file's data")
        flat = np.frombuffer(self._map, np.uint8, rows * row_bytes, start)
        outer = tuple(reversed(dims[1:]))
        if ggml_type in _TYPED:
            data = flat.view(np.dtype(_TYPED[ggml_type]).newbyteorder("<")).reshape(
                (*outer, dims[0]))
        else:
            data = flat.reshape((*outer, row_bytes))
        return GGUFTensor(name, dims, ggml_type, data)
