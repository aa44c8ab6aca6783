"""PagedLayout: probing a kernel's block layout and moving KV through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vllm_fakes import cpu_vec_writer, flash_writer, scaling_writer

from dualpath.core.errors import ConfigError, TransferError
from dualpath.integrations.vllm.kv_layout import PagedLayout

H, N, D = 3, 16, 8


@pytest.mark.parametrize("writer", [cpu_vec_writer, flash_writer])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probe_then_gather_returns_what_the_kernel_wrote(writer, dtype) -> None:
    cache = torch.zeros(5, H, N, 2 * D, dtype=dtype)
    layout = PagedLayout.probe(writer, cache, num_kv_heads=H, head_dim=D, block_tokens=N)
    gen = torch.Generator().manual_seed(0)
    t = 2 * N + 5
    key = torch.randn(t, H, D, generator=gen).to(dtype)
    value = torch.randn(t, H, D, generator=gen).to(dtype)
    blocks = [3, 1, 4]
    slots = torch.tensor([blocks[i // N] * N + i % N for i in range(t)])
    writer(key, value, cache, slots)
    tm = layout.gather(cache, torch.tensor(blocks))
    assert torch.equal(tm[:t, 0], key) and torch.equal(tm[:t, 1], value)


def test_scatter_is_the_inverse_of_gather() -> None:
    cache = torch.randn(6, H, N, 2 * D)
    layout = PagedLayout.probe(cpu_vec_writer, torch.zeros_like(cache), num_kv_heads=H,
                               head_dim=D, block_tokens=N)
    ids = torch.tensor([5, 0, 2])
    tm = layout.gather(cache, ids)
    other = torch.zeros_like(cache)
    layout.scatter(other, ids, tm)
    assert torch.equal(other[ids], cache[ids])
    assert not other[torch.tensor([1, 3, 4])].any()


def test_bytes_round_trip_matches_our_kv_bytes_layout() -> None:
    from dualpath.model.kv_bytes import kv_to_bytes

    layout = PagedLayout.probe(flash_writer, torch.zeros(2, H, N, 2 * D), num_kv_heads=H,
                               head_dim=D, block_tokens=N)
    kv = torch.randn(7, 2, H, D)
    raw = layout.to_bytes(kv)
    assert raw.shape == (7, layout.bytes_per_token)
    np.testing.assert_array_equal(raw, kv_to_bytes(kv))
    assert torch.equal(layout.from_bytes(raw), kv)
    with pytest.raises(TransferError):
        layout.from_bytes(raw[:, :-1])


def test_probe_refuses_a_cache_that_is_not_a_plain_copy() -> None:
    with pytest.raises(ConfigError, match="not a plain copy"):
        PagedLayout.probe(scaling_writer, torch.zeros(2, H, N, 2 * D), num_kv_heads=H,
                          head_dim=D, block_tokens=N)


def test_check_layer_rejects_other_shapes() -> None:
    layout = PagedLayout.probe(flash_writer, torch.zeros(2, H, N, 2 * D), num_kv_heads=H,
                               head_dim=D, block_tokens=N)
    layout.check_layer(torch.zeros(9, H, N, 2 * D))
    with pytest.raises(TransferError):
        layout.check_layer(torch.zeros(9, H, N + 1, 2 * D))
    with pytest.raises(TransferError):
        layout.check_layer(torch.zeros(9, H, N, 2 * D, dtype=torch.float16))
