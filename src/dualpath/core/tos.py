"""The IP TOS bytes that mark the two traffic classes on a compute network.

Sockets mark their packets (`transfer.zmq_transport`), and kernel shapers queue them apart
(`testbed.shaping`; on real hardware, the switch or NIC QoS maps DSCP to virtual lanes), so
model-execution traffic keeps priority over KV transfers like the paper's InfiniBand lanes.
"""

from __future__ import annotations

TOS_MODEL = 0xB8  # DSCP EF (46) << 2: model-execution traffic, high priority
TOS_KV = 0x20  # DSCP CS1 (8) << 2, "lower effort": KV-cache traffic (also anything unmarked)
