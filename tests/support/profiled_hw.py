"""A profiled hardware file (our runtime's shape, `bench.runtime_profile`) for simulator tests."""

from __future__ import annotations

from typing import Any

PROFILED_HW: dict[str, Any] = {
    "name": "test-runtime", "gpus_per_node": 1, "snic_bytes_s": 8e6, "cnic_bytes_s": 64e6,
    "nic_efficiency": 1.0, "pcie_bytes_s": 1e12, "storage_aggregate_bytes_s": 1e12,
    "dram_buffer_bytes": 256 << 20, "hbm_bytes": 64e9, "hbm_reserve_fraction": 0.0,
    "prefill_batch_overhead_s": 0.005, "prefill_context_token_s": 2e-6,
    "prefill_new_token_s": 2e-5, "decode_step_overhead_s": 0.004, "decode_seq_s": 0.001,
    "decode_context_token_s": 1e-7, "turn_gap_s": 0.001,
}
