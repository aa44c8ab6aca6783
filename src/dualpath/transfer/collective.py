"""Synthetic model-execution traffic: the per-layer expert-parallel all-to-all on a CNIC.

Our engines run one small model per process and have no real collectives, but DualPath's
traffic isolation only matters when the model's own communication competes with KV
traffic on the CNIC. `CollectiveLoad.run_layer(tokens)` therefore reserves, on the engine's
CNIC high-priority class, the bytes one GPU would send (TX) and receive (RX) in one MoE
layer's dispatch + combine, and blocks for that time, as a real all-to-all on the critical
path would. No bytes are moved (it is an emulation of time and link occupancy).

Bytes per GPU per MoE layer, each direction (uniform routing, DeepEP-style):

    tokens * experts_per_token * hidden_size
           * (dispatch_bytes_per_elem + combine_bytes_per_elem) * (ep_size - 1) / ep_size

`tokens` are this GPU's tokens in the layer; each is dispatched to `experts_per_token`
routed experts, a fraction (ep_size-1)/ep_size of which live on other GPUs, and the
expert outputs come back (combine). DeepEP dispatches FP8 (1 byte/elem; scales ignored)
and combines BF16 (2 bytes/elem), the defaults here. Dense layers have no all-to-all.
Example, DeepSeek-V3 (hidden 7168, 8 routed experts/token, EP 64 in the paper's PE):
4096 tokens -> 4096 * 8 * 7168 * 3 * 63/64 ≈ 693 MB per layer per direction.
"""

from __future__ import annotations

from dataclasses import dataclass

from dualpath.core.errors import ConfigError
from dualpath.transfer.nic import Direction, EmulatedNic, Slot, TrafficClass


@dataclass(frozen=True)
class AllToAllShape:
    """The parameters of the formula in the module docstring."""

    hidden_size: int
    experts_per_token: int
    ep_size: int
    dispatch_bytes_per_elem: float = 1.0  # FP8 dispatch (DeepEP)
    combine_bytes_per_elem: float = 2.0  # BF16 combine (DeepEP)

    def __post_init__(self) -> None:
        if self.hidden_size <= 0 or self.experts_per_token < 0 or self.ep_size < 1:
            raise ConfigError("all-to-all shape: need hidden_size > 0, experts_per_token >= 0, ep_size >= 1")
        if self.dispatch_bytes_per_elem < 0 or self.combine_bytes_per_elem < 0:
            raise ConfigError("all-to-all shape: bytes per element must be >= 0")

    @property
    def bytes_per_token(self) -> float:
        """Bytes one token costs per MoE layer, each direction."""
        return (self.experts_per_token * self.hidden_size
                * (self.dispatch_bytes_per_elem + self.combine_bytes_per_elem)
                * (self.ep_size - 1) / self.ep_size)

    def layer_bytes(self, tokens: int) -> int:
        """Bytes per GPU per MoE layer, each direction, for `tokens` tokens."""
        return int(tokens * self.bytes_per_token)


class CollectiveLoad:
    """Pushes each layer's all-to-all bytes through `cnic` in the high-priority class."""

    def __init__(self, cnic: EmulatedNic, shape: AllToAllShape, *, scale: float = 1.0) -> None:
        """`scale` multiplies the bytes (e.g. to keep the paper's bytes-to-bandwidth ratio
        when the emulated CNIC is slower than 400 Gbps)."""
        if scale < 0:
            raise ConfigError("collective load scale must be >= 0")
        self.cnic = cnic
        self.shape = shape
        self.scale = scale

    def run_layer(self, tokens: int) -> Slot:
        """Block while one MoE layer's all-to-all for `tokens` tokens crosses the CNIC.

        Full duplex: the RX reservation may overlap the TX one (it starts no earlier than
        the TX slot), so with idle lanes the call takes bytes / rate once.
        """
        nbytes = int(self.shape.layer_bytes(tokens) * self.scale)
        if nbytes <= 0:
            return self.cnic.transmit(0)
        tx = self.cnic.transmit(nbytes, TrafficClass.MODEL, Direction.TX)
        rx = self.cnic.transmit(nbytes, TrafficClass.MODEL, Direction.RX,
                                earliest_start_s=tx.start_s)
        return Slot(tx.start_s, max(tx.end_s, rx.end_s))
