"""Building the simulated cluster: nodes, engines (GPUs), their links and EP groups.

Engines are numbered node by node (prefill nodes first), as the runtime numbers them. Each
role's engines are cut, in that order, into expert-parallel groups of the configured size
(`SimConfig.ep_group_gpus`, else the model preset's `prefill_ep_gpus` / `decode_ep_gpus`,
capped at the role's GPUs); a last group may be smaller. A group's size alone sets its
members' weights and KV room, so a cluster twice as big is twice the instances.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dualpath.core.errors import ConfigError
from dualpath.sim.config import SimConfig
from dualpath.sim.cost import CostModel
from dualpath.sim.hardware import HardwareSpec
from dualpath.sim.link import Link
from dualpath.sim.model_cost import ModelCost
from dualpath.sim.state import DecodeGroup, Engine, Node, PrefillGroup

Callback = Callable[[float, Any], Any]


class Cluster:
    """The built cluster; `engines[eid]` and `nodes[nid]` are indexed by id."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.engines: list[Engine] = []
        self.prefill_groups: list[PrefillGroup] = []
        self.decode_groups: list[DecodeGroup] = []


def ep_sizes(cfg: SimConfig, model: ModelCost) -> tuple[int, int]:
    if cfg.ep_group_gpus is not None:
        return cfg.ep_group_gpus
    return model.prefill_ep_gpus, model.decode_ep_gpus


def build_cluster(cfg: SimConfig, hw: HardwareSpec, model: ModelCost, cost: CostModel,
                  on_read_done: Callback, on_cnic_done: Callback) -> Cluster:
    p_nodes, d_nodes = cfg.pd
    g = hw.gpus_per_node
    bin_s = cfg.timeline_bin_s
    snic_bw = hw.snic_share_bytes_s(p_nodes + d_nodes)
    cnic_bw = hw.cnic_goodput_bytes_s
    buf = hw.buffer_bytes_for(model.name)
    c = Cluster()
    for n in range(p_nodes + d_nodes):
        role = "prefill" if n < p_nodes else "decode"
        node = Node(n, role, Link(f"snic{n}", snic_bw, on_complete=on_read_done, bin_s=bin_s), buf)
        c.nodes.append(node)
        for _ in range(g):
            eid = len(c.engines)
            rx = Link(f"cnic{eid}-rx", cnic_bw, hi_weight=hw.cnic_hi_weight,
                      on_complete=on_cnic_done, bin_s=bin_s)
            tx = Link(f"cnic{eid}-tx", cnic_bw, hi_weight=hw.cnic_hi_weight,
                      on_complete=on_cnic_done, bin_s=bin_s)
            eng = Engine(eid, node, role, rx, tx, 0.0, 0)
            node.engines.append(eng)
            c.engines.append(eng)
    pe_size, de_size = ep_sizes(cfg, model)
    usable = hw.hbm_bytes * (1.0 - hw.hbm_reserve_fraction)
    for role, size in (("prefill", pe_size), ("decode", de_size)):
        members = [e for e in c.engines if e.role == role]
        for gid, start in enumerate(range(0, len(members), size)):
            group = members[start:start + size]
            w = cost.weight_bytes(len(group))
            if w >= usable:
                raise ConfigError(
                    f"{model.name} does not fit: {w / 1e9:.1f} GB of weights per {role} GPU in an "
                    f"EP group of {len(group)} GPUs (HBM {usable / 1e9:.1f} GB usable); use "
                    f"{size} {role} GPUs per group (a multiple of {max(1, size // g)} nodes, --pd)")
            kv = cost.kv_hbm_bytes(w)
            kv_tokens = int(kv // model.kv_bytes_per_token)
            if cfg.de_kv_capacity_tokens is not None:
                kv_tokens = cfg.de_kv_capacity_tokens
            for e in group:
                e.kv_hbm_bytes = kv
                # free_kv_tokens is the scheduler's decode-side KV room; a prefill engine keeps
                # no KV between requests and reports 0, as the runtime's prefill engines do.
                e.free_kv_tokens = kv_tokens if role == "decode" else 0
            if role == "prefill":
                nodes_spanned = len({e.node.nid for e in group})
                pg = PrefillGroup(gid, group, w, cost.ep_bytes_per_token(nodes_spanned))
                c.prefill_groups.append(pg)
                for e in group:
                    e.group = pg
            else:
                dg = DecodeGroup(gid, group, w)
                c.decode_groups.append(dg)
                for e in group:
                    e.group = dg
    return c
