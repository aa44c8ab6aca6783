"""`gguf_file.GGUFFile` reads what `gguf.GGUFReader` reads, and a damaged file is a clear
`ModelLoadError`, never another exception."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from conftest import write_llama_gguf

from dualpath.core.errors import ModelLoadError
from dualpath.model.gguf_file import GGUFFile


def _assert_same_as_gguf_reader(path: Path) -> None:
    from gguf import GGUFReader

    ref = GGUFReader(str(path))
    ours = GGUFFile(path)
    # GGUFReader also lists the header (GGUF.version, counts) as pseudo-fields
    expected = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert ours.fields.keys() == expected.keys()
    for key, value in expected.items():
        assert ours.fields[key] == value, key
    assert ours.data_offset == ref.data_offset and ours.alignment == ref.alignment
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors, strict=True):
        assert list(a.shape) == [int(d) for d in b.shape], a.name
        assert a.tensor_type == int(b.tensor_type), a.name
        assert a.data.shape == b.data.shape and a.data.dtype == b.data.dtype, a.name
        assert np.array_equal(a.data, b.data), a.name


def _small_gguf(path: Path) -> Path:
    """A file with every metadata value type, nested arrays and several tensor types."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    w = GGUFWriter(str(path), "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 1.5)
    w.add_uint64("t.u64", 2**60)
    w.add_int64("t.i64", -(2**60))
    w.add_float64("t.f64", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ✓")
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    w.add_array("t.strs", ["a", "", "ü"])
    rng = np.random.default_rng(0)
    w.add_tensor("f32", rng.standard_normal((3, 64)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((64,)).astype(np.float16))
    w.add_tensor("q8", quantize(rng.standard_normal((4, 64)).astype(np.float32),
                                GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
    w.add_tensor("q4", quantize(rng.standard_normal((2, 2, 64)).astype(np.float32),
                                GGMLQuantizationType.Q4_1), raw_dtype=GGMLQuantizationType.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_reads_every_value_type_like_gguf_reader(tmp_path: Path) -> None:
    path = _small_gguf(tmp_path / "small.gguf")
    _assert_same_as_gguf_reader(path)
    fields = GGUFFile(path).fields
    assert fields["t.str"] == "héllo ✓" and fields["t.strs"] == ["a", "", "ü"]
    assert fields["t.i64"] == -(2**60)


def test_reads_a_model_file_like_gguf_reader(tmp_path: Path, tiny) -> None:
    _assert_same_as_gguf_reader(write_llama_gguf(tmp_path / "tiny.gguf", tiny[0]))


def test_reads_smollm2_like_gguf_reader() -> None:
    from dualpath.model.source import smollm2_path

    try:
        path = smollm2_path()
    except ModelLoadError as exc:
        pytest.skip(str(exc))
    _assert_same_as_gguf_reader(path)


def test_damaged_files_are_model_load_errors(tmp_path: Path) -> None:
    good = _small_gguf(tmp_path / "good.gguf").read_bytes()
    header_end = GGUFFile(tmp_path / "good.gguf").data_offset
    bad = tmp_path / "bad.gguf"
    rng = random.Random(0)
    # every truncation inside the header, and a sample of those inside the tensor data
    cuts = [*range(0, header_end + 1), *rng.sample(range(header_end + 1, len(good)), 40)]
    for cut in cuts:
        bad.write_bytes(good[:cut])
        with pytest.raises(ModelLoadError):
            GGUFFile(bad)
    # random byte flips in the header: either still a readable file or a ModelLoadError
    errors = 0
    for _ in range(600):
        data = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(header_end)] = rng.randrange(256)
        bad.write_bytes(bytes(data))
        try:
            GGUFFile(bad)
        except ModelLoadError:
            errors += 1
    assert errors > 100  # the flips did reach the checks


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(ModelLoadError, match="no GGUF magic"):
        GGUFFile(path)
    with pytest.raises(ModelLoadError, match="cannot read"):
        GGUFFile(tmp_path / "missing.gguf")
