"""Moving bytes between engines and to storage, through emulated NICs.

- `traffic_manager`: `TrafficManager`, one engine's bundle of all of the below, built from
  a picklable `EngineTrafficSpec` (`plan_cluster_traffic` lays out a cluster).

- `nic`: `EmulatedNic` (software-shaped SNIC/CNIC shared across processes, two classes).
- `base`: the `Transport` interface and `Message`; `zmq_transport.ZmqTransport` (TCP),
  `local_transport.LocalTransport` (in-process), `mooncake_transport` (optional RDMA).
- `shaped_store`: KV store access paced by the node's SNIC; the per-node read queue.
- `buffer_pool`: the bounded PE/DE host buffers.
- `collective`: the synthetic per-layer all-to-all load on a CNIC's high-priority class.

Importing this package does not import zmq; import the transport module you use.
"""

from dualpath.transfer.nic import Direction, EmulatedNic, NicSpec, NicStats, TrafficClass

__all__ = ["Direction", "EmulatedNic", "NicSpec", "NicStats", "TrafficClass"]
