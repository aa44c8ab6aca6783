"""Moving bytes between engines and to storage, through emulated NICs.

- `nic`: `EmulatedNic` (software-shaped SNIC/CNIC shared across processes, two classes).
- `base`: the `Transport` interface and `Message`; `zmq_transport.ZmqTransport` (TCP),
  `mooncake_transport` (optional RDMA); frames are built and validated by `dualpath.wire`.
- `buffer_pool`: the bounded PE/DE host buffers (byte budgets).

Importing this package does not import zmq; import the transport module you use.
"""

from dualpath.transfer.nic import Direction, EmulatedNic, NicSpec, NicStats, TrafficClass

__all__ = ["Direction", "EmulatedNic", "NicSpec", "NicStats", "TrafficClass"]
