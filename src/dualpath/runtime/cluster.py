"""The local DualPath cluster as a server `Backend`: the scheduler process.

It starts the engine processes, owns the waiting queue, runs `dualpath.scheduler` to place
each request on a prefill engine, a decode engine and a read path, and relays tokens back.
It keeps the scheduler's view of the cluster (seq_e, tok_e, free KV, read_q) from its own
assignments and the engines' completion messages, so a decision never waits for a poll.

Failure handling (engine deaths, failed KV transfers) lives in `runtime/failover.py`; the
request record in `runtime/tracked.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import zmq
import zmq.asyncio

from dualpath.core.backend import AdmissionLimits, Backend, BackendMetrics
from dualpath.core.config import ClusterConfig
from dualpath.core.errors import EngineError
from dualpath.core.requests import FinishEvent, GenerateEvent, GenerateRequest, TokenEvent
from dualpath.core.systems import system_spec
from dualpath.kv.file_store import FileKVStore
from dualpath.kv.hashing import block_hashes
from dualpath.kv.layout import BlockGeometry
from dualpath.runtime import protocol as proto
from dualpath.runtime.failover import TRANSFER_RETRY_DELAY_S, FailoverMixin, log_tail
from dualpath.runtime.launcher import EngineProcesses, EngineSpec, engine_specs
from dualpath.runtime.tracked import TrackedRequest
from dualpath.runtime.view import ClusterState
from dualpath.scheduler import (
    GlobalScheduler,
    RequestInfo,
    alpha_tokens,
    beta_tokens,
    scheduler_config_for_system,
)

logger = logging.getLogger(__name__)



class LocalCluster(FailoverMixin, Backend):
    """Scheduler process + engine processes on this machine (see module doc)."""

    def __init__(self, config: ClusterConfig, *, record_scheduler_calls: bool = False) -> None:
        """`record_scheduler_calls` keeps every scheduler call's inputs and the placements
        actually dispatched (`scheduler_calls`), so tests can replay them (as the simulator's
        `record_scheduler_inputs` does)."""
        from dualpath.model.loader import load_model

        self.config = config
        self.spec = system_spec(config.system)
        model, tok = load_model(config.model, seed=config.model_seed)
        self.model_config = model.config
        self._tokenizer = tok
        del model
        self.geometry = BlockGeometry.from_model_config(self.model_config, config.block_size)
        self.store = FileKVStore(config.store_path, self.geometry) if config.use_kv_store else None
        self.state = ClusterState()
        self._requests: dict[str, TrackedRequest] = {}
        self._waiting: list[TrackedRequest] = []
        self._wake = asyncio.Event()
        self._ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._run_dir = ""
        self._procs: EngineProcesses | None = None
        self._scheduler: GlobalScheduler | None = None
        self._counters: dict[int, dict[str, float]] = {}
        self._record = record_scheduler_calls
        self.transfer_retry_delay_s = TRANSFER_RETRY_DELAY_S
        self.scheduler_calls: list[tuple[list[RequestInfo], Any, list[tuple[Any, ...]]]] = []

    # ---- Backend properties --------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.config.served_model_name or self.config.model

    @property
    def max_model_len(self) -> int:
        """The model's context, capped by the largest decode engine's KV room (whole blocks),
        so the server refuses (400) what no decode engine could ever hold."""
        room = self.state.largest_decode_kv_tokens()
        limit = self.model_config.max_position_embeddings
        bs = self.config.block_size
        return min(limit, room // bs * bs) if room >= bs else limit

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def admission(self) -> AdmissionLimits:
        return AdmissionLimits(max_running=self.config.max_waiting_requests,
                               max_waiting=self.config.max_waiting_requests)

    def is_ready(self) -> bool:
        return self._ready

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._run_dir = tempfile.mkdtemp(prefix="dualpath-", dir=base)
        self._ctx = zmq.asyncio.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        port = self._router.bind_to_random_port(f"tcp://{self.config.host}")
        control = f"tcp://{self.config.host}:{port}"
        self._procs = EngineProcesses(self.config, control, self._run_dir)
        specs = engine_specs(self.config)
        for spec in specs:
            self._procs.start(spec)
        await self._await_hellos(specs)
        self._scheduler = GlobalScheduler(self._scheduler_config())
        self._tasks = [asyncio.create_task(self._control_loop()),
                       asyncio.create_task(self._schedule_loop()),
                       asyncio.create_task(self._supervise_loop())]
        self._ready = True
        logger.info("cluster ready: %d engines (%s), run dir %s", len(specs),
                    self.config.system, self._run_dir)

    async def _await_hellos(self, specs: list[EngineSpec]) -> None:
        assert self._procs is not None
        deadline = time.monotonic() + self.config.engine_start_timeout_s
        while len(self.state.engines) < len(specs):
            dead = self._procs.poll_dead()
            if dead:
                log = os.path.join(self._run_dir, f"engine-{dead[0]}.log")
                tail = log_tail(log)
                await self.shutdown()
                raise EngineError(f"engine {dead[0]} exited during start-up; log tail:\n{tail}")
            if time.monotonic() > deadline:
                await self.shutdown()
                raise EngineError("engines did not start within engine_start_timeout_s")
            if await self._router.poll(200):
                _, data = await self._router.recv_multipart()
                msg = proto.decode(data)
                if isinstance(msg, proto.Hello):
                    self.state.add_engine(msg)

    def _scheduler_config(self) -> Any:
        pe_rates = [e.prefill_tokens_per_s for e in self.state.engines.values()
                    if e.role == "prefill" and e.prefill_tokens_per_s > 0]
        alpha = 1 << 62
        if self.config.snic_bytes_s and not self.spec.free_io:
            alpha = alpha_tokens(self.config.snic_bytes_s, self.model_config.kv_bytes_per_token)
        beta = beta_tokens(min(pe_rates)) if pe_rates else 1 << 62
        return scheduler_config_for_system(self.spec, alpha_tokens=alpha, beta_tokens=beta,
                                           read_path=self.config.read_path,
                                           quota_s=self.config.prefill_quota_s)

    async def shutdown(self) -> None:
        self._ready = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for req in list(self._requests.values()):
            self._release(req)
            self._finish(req, "abort", error="server shutting down")
        self._waiting = []
        if self._procs is not None:
            for engine_id in list(self.state.engines):
                with contextlib.suppress(zmq.ZMQError):
                    await self._router.send_multipart([str(engine_id).encode(),
                                                       proto.encode(proto.Shutdown())])
            await asyncio.to_thread(self._procs.stop)
            self._procs = None
        if hasattr(self, "_router"):
            self._router.close(0)
            self._ctx.term()
        if self._run_dir and not os.environ.get("DUALPATH_KEEP_RUN_DIR"):
            shutil.rmtree(self._run_dir, ignore_errors=True)

    def kill_engine(self, engine_id: int) -> None:
        """Kill an engine process hard (failure tests, chaos drills)."""
        assert self._procs is not None
        self._procs.kill(engine_id)

    # ---- requests ------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateEvent]:
        prompt = list(request.prompt_token_ids)
        hashes, cached = self._lookup(prompt)
        req = TrackedRequest(request, prompt, hashes, cached)
        room = self.state.largest_decode_kv_tokens()
        if self._decode_tokens(req) > room:  # the scheduler would wait for room forever
            yield FinishEvent(req.rid, "error", len(prompt), 0, 0, error=(
                f"prompt + max_tokens needs {self._decode_tokens(req)} tokens of KV; the "
                f"largest decode engine holds {room}"))
            return
        if not self.state.has_role("prefill"):
            yield FinishEvent(req.rid, "error", len(prompt), 0, 0,
                              error="no live prefill engine left")
            return
        self._requests[req.rid] = req
        self._waiting.append(req)
        self._wake.set()
        try:
            while True:
                event = await req.events.get()
                yield event
                if isinstance(event, FinishEvent):
                    return
        finally:
            if not req.finished:  # the client went away
                self._cancel(req)
                self._finish(req, "abort")

    async def abort(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is not None and not req.finished:
            self._cancel(req)
            self._finish(req, "abort")

    def _lookup(self, prompt: list[int]) -> tuple[list[str], int]:
        """Leading blocks of the prompt in the store (at least one token is always computed)."""
        if self.store is None:
            return [], 0
        bs = self.config.block_size
        usable = (len(prompt) - 1) // bs
        hashes = block_hashes(prompt[: usable * bs], bs, self.model_config.identity)
        hits = self.store.longest_prefix(hashes)
        return hashes[:hits], hits * bs

    def _cancel(self, req: TrackedRequest) -> None:
        """Tell the engines to drop the request and return its resources to the view."""
        for engine_id in (req.pe, req.de):
            if engine_id is not None and self.state.alive(engine_id):
                self._send(engine_id, proto.Abort(req.wire_id))
        self._release(req)
        if req in self._waiting:
            self._waiting.remove(req)
        self._wake.set()  # the freed room may let waiting requests go

    def _release(self, req: TrackedRequest) -> None:
        if req.pe is not None:
            self.state.prefill_done(req.pe, len(req.prompt))
        if req.de is not None:
            self.state.decode_done(req.de, req.de_kv_tokens)
        if req.read_node is not None:
            self.state.read_done(req.read_node, req.read_tokens)
        req.pe = req.de = req.read_node = None
        req.read_tokens = 0

    def _decode_tokens(self, req: TrackedRequest) -> int:
        """KV room on the DE, in whole blocks (the DE allocates whole blocks)."""
        bs = self.config.block_size
        need = len(req.prompt) + max(1, req.remaining_tokens)
        return -(-need // bs) * bs

    def _finish(self, req: TrackedRequest, reason: str, error: str | None = None) -> None:
        if req.finished:
            return
        req.finished = True
        self._requests.pop(req.rid, None)
        cached = req.first_cached_tokens if req.first_cached_tokens is not None else 0
        req.events.put_nowait(FinishEvent(req.rid, reason, len(req.request.prompt_token_ids),
                                          len(req.generated), cached, error=error))

    # ---- scheduling ------------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._waiting or self._scheduler is None:
                continue
            infos = [RequestInfo(r.rid, len(r.prompt), r.cached_tokens,
                                 decode_reserve_tokens=self._decode_tokens(r) - len(r.prompt))
                     for r in self._waiting]
            view = self.state.view()
            result = self._scheduler.schedule(infos, view)
            placed = set()
            dispatched: list[tuple[Any, ...]] = []
            for p in result.placements:
                req = self._requests.get(str(p.request_id))
                if req is None:
                    continue
                self._dispatch(req, p)
                placed.add(req.rid)
                dispatched.append((req.rid, req.pe, req.de, p.read.side))
            if self._record:
                self.scheduler_calls.append((infos, view, dispatched))
            self._waiting = [r for r in self._waiting if r.rid not in placed]

    def _dispatch(self, req: TrackedRequest, p: Any) -> None:
        side = p.read.side
        if side == "split":  # the runtime reads from one side: the larger share
            side = "pe" if p.read.pe_tokens >= p.read.de_tokens else "de"
        req.pe, req.de = p.pe_engine, p.de_engine
        req.prefill_engine = req.pe
        self.state.assign_prefill(req.pe, len(req.prompt))
        req.de_kv_tokens = self._decode_tokens(req)
        self.state.assign_decode(req.de, req.de_kv_tokens)
        if req.cached_tokens:
            req.read_node = p.pe_node if side == "pe" else p.de_node
            req.read_tokens = req.cached_tokens
            self.state.read_started(req.read_node, req.read_tokens)
        if req.first_cached_tokens is None:
            req.first_cached_tokens = req.cached_tokens
        req.attempts += 1
        s = req.request.sampling
        eos = tuple(self._tokenizer.eos_token_ids)
        banned = list(eos) if (s.min_tokens > len(req.generated) and not s.ignore_eos) else []
        pe_addr = self.state.engines[req.pe].data_address
        de_addr = self.state.engines[req.de].data_address
        req.attempt_generated = len(req.generated)
        self._send(req.de, proto.AssignDecode(
            request_id=req.wire_id, prompt_token_ids=req.prompt, hit_hashes=req.hashes,
            read_path=side, prefill_engine=req.pe, prefill_address=pe_addr,
            max_tokens=req.remaining_tokens,
            min_tokens=max(0, s.min_tokens - len(req.generated)), temperature=s.temperature,
            top_p=s.top_p, seed=s.seed, ignore_eos=s.ignore_eos,
            stop_token_ids=list(s.stop_token_ids),
        ))
        self._send(req.pe, proto.AssignPrefill(
            request_id=req.wire_id, prompt_token_ids=req.prompt, hit_hashes=req.hashes,
            read_path=side, decode_engine=req.de, decode_address=de_addr,
            layerwise=self.spec.layerwise, temperature=s.temperature, top_p=s.top_p,
            seed=s.seed, banned_first_token_ids=banned,
        ))

    def _send(self, engine_id: int, msg: proto.ControlMessage) -> None:
        self._router.send_multipart([str(engine_id).encode(), proto.encode(msg)])

    # ---- engine messages -------------------------------------------------------------------

    async def _control_loop(self) -> None:
        while True:
            _, data = await self._router.recv_multipart()
            try:
                self._on_message(proto.decode(data))
            except Exception:
                logger.exception("bad control message")

    def _attempt(self, wire_id: str) -> TrackedRequest | None:
        """The request whose *current* attempt is `wire_id` (None for stale attempts)."""
        rid, sep, _ = wire_id.rpartition("#")
        req = self._requests.get(rid) if sep else None
        return req if req is not None and req.wire_id == wire_id else None

    def _on_message(self, msg: proto.ControlMessage) -> None:
        if isinstance(msg, proto.Tokens):
            req = self._attempt(msg.request_id)
            if req is not None and req.de == msg.engine_id:
                req.generated.extend(msg.token_ids)
                req.events.put_nowait(TokenEvent(req.rid, tuple(msg.token_ids)))
        elif isinstance(msg, proto.Finished):
            req = self._attempt(msg.request_id)
            if req is None or req.de != msg.engine_id:
                return
            if req.pe is not None and self.state.alive(req.pe):
                # The DE gave up before the prefill ended (e.g. it refused the request): the PE
                # would otherwise keep the task, maybe waiting forever for the DE's hit KV.
                self._send(req.pe, proto.Abort(req.wire_id))
            self._release(req)  # also the PE's share if its PrefillDone has not come yet
            if req.attempts == 1:  # what was really loaded (a bad block shortens the prefix)
                req.first_cached_tokens = msg.cached_tokens
            self._finish(req, msg.finish_reason, msg.error)
            self._wake.set()
        elif isinstance(msg, proto.PrefillDone):
            req = self._attempt(msg.request_id)
            if req is not None and req.pe == msg.engine_id:
                self.state.prefill_done(req.pe, len(req.prompt))
                req.pe = None
                self._wake.set()
        elif isinstance(msg, proto.ReadDone):
            req = self._attempt(msg.request_id)
            if req is not None and req.read_node is not None:
                self.state.read_done(req.read_node, req.read_tokens)
                req.read_node = None
                req.read_tokens = 0
                self._wake.set()
        elif isinstance(msg, proto.EngineStats):
            self._counters[msg.engine_id] = msg.counters
            self.state.record_counters(msg.engine_id, msg.counters)
        elif isinstance(msg, proto.TransferFailed):
            self._transfer_failed(msg)

    # ---- metrics ---------------------------------------------------------------------------

    def metrics_snapshot(self) -> BackendMetrics:
        return self.state.metrics(self._counters, num_waiting=len(self._waiting),
                                  num_running=len(self._requests) - len(self._waiting))

    def counters(self) -> dict[int, dict[str, float]]:
        """Latest raw counters per engine (bytes per path, NIC stats, store stats)."""
        return dict(self._counters)
