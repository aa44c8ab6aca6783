"""The local DualPath cluster as a server `Backend`: the scheduler process.

A thin I/O shell around `RequestBooks` (the pure owner of every request's life and of the
load the scheduler sees): it starts the engine processes, receives their reports on one zmq
ROUTER socket, runs `dualpath.scheduler` when the books ask for it, and carries out the
books' commands — send a message to an engine, emit an event to a client, retry later.

Three loops, none of which one message can end: control (engine reports, decoded by the
validating `wire` decoder; a bad frame is counted and dropped), scheduling (woken by the
books), supervision (an engine process that exits is handled as an engine death).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import zmq
import zmq.asyncio

from dualpath import wire
from dualpath.core.backend import AdmissionLimits, Backend, BackendMetrics, Tokenizer
from dualpath.core.config import ClusterConfig
from dualpath.core.errors import EngineError
from dualpath.core.requests import FinishEvent, GenerateEvent, GenerateRequest
from dualpath.core.systems import system_spec
from dualpath.kv.file_store import FileKVStore
from dualpath.kv.hashing import block_hashes
from dualpath.kv.layout import BlockGeometry
from dualpath.runtime.books import BooksConfig, Command, Emit, RequestBooks, RetryAfter, Send
from dualpath.runtime.cluster_metrics import ClusterMetrics
from dualpath.runtime.launcher import EngineProcesses, EngineSpec, engine_specs, log_tail
from dualpath.scheduler import (
    GlobalScheduler,
    RequestInfo,
    SchedulerConfig,
    alpha_tokens,
    beta_tokens,
    scheduler_config_for_system,
)
from dualpath.wire import control as ctl

logger = logging.getLogger(__name__)

SUPERVISE_INTERVAL_S = 0.25
# A transfer retry waits until the engines' fast-fail window for the peer has passed, so the
# next attempt really tries the peer again (and a dead peer has been noticed meanwhile).
RETRY_MARGIN_S = 0.5


class LocalCluster(Backend):
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
        self.books = RequestBooks(BooksConfig(
            block_size=config.block_size, layerwise=self.spec.layerwise,
            eos_token_ids=tuple(tok.eos_token_ids or self.model_config.eos_token_ids),
            transfer_retry_delay_s=config.peer_retry_after_s + RETRY_MARGIN_S,
        ), self._lookup, record_calls=record_scheduler_calls)
        self.metrics = ClusterMetrics()
        self._streams: dict[str, asyncio.Queue[GenerateEvent]] = {}
        self._wake = asyncio.Event()
        self._ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._run_dir = ""
        self._procs: EngineProcesses | None = None
        self._expected: set[int] = set()
        self._scheduler: GlobalScheduler | None = None

    # ---- Backend properties --------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.config.served_model_name or self.config.model

    @property
    def max_model_len(self) -> int:
        """The model's context, capped by the largest decode engine's KV room (whole blocks),
        so the server refuses (400) what no decode engine could ever hold."""
        room = self.books.ledger.largest_decode_kv_tokens()
        limit = self.model_config.max_position_embeddings
        bs = self.config.block_size
        return min(limit, room // bs * bs) if room >= bs else limit

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def admission(self) -> AdmissionLimits:
        return AdmissionLimits(max_running=self.config.max_waiting_requests,
                               max_waiting=self.config.max_waiting_requests)

    @property
    def scheduler_calls(self) -> list[tuple[list[RequestInfo], Any, list[tuple[Any, ...]]]]:
        return self.books.scheduler_calls

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
        self._expected = {s.engine_id for s in specs}
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
        while len(self.books.ledger.engines) < len(specs):
            dead = self._procs.poll_dead()
            if dead:
                tail = log_tail(self._log_path(dead[0]))
                await self.shutdown()
                raise EngineError(f"engine {dead[0]} exited during start-up; log tail:\n{tail}")
            if time.monotonic() > deadline:
                await self.shutdown()
                raise EngineError("engines did not start within engine_start_timeout_s")
            if await self._router.poll(200):
                self._on_frames(await self._router.recv_multipart())

    def _scheduler_config(self) -> SchedulerConfig:
        pe_rates = [e.prefill_tokens_per_s for e in self.books.ledger.engines.values()
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
        self._run(self.books.shutdown())
        if self._procs is not None:
            for engine_id in list(self.books.ledger.engines):
                with contextlib.suppress(zmq.ZMQError):
                    await self._router.send_multipart([str(engine_id).encode(),
                                                       wire.encode(ctl.Shutdown())])
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

    def _log_path(self, engine_id: int) -> str:
        return os.path.join(self._run_dir, f"engine-{engine_id}.log")

    # ---- requests ------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateEvent]:
        rid = request.request_id
        stream: asyncio.Queue[GenerateEvent] = asyncio.Queue()
        self._streams[rid] = stream
        finished = False
        try:
            self._run(self.books.submit(request))
            while True:
                event = await stream.get()
                yield event
                if isinstance(event, FinishEvent):
                    finished = True
                    return
        finally:
            self._streams.pop(rid, None)
            if not finished:  # the client went away
                self._run(self.books.cancel(rid))

    async def abort(self, request_id: str) -> None:
        self._run(self.books.cancel(request_id))

    def _lookup(self, prompt: Sequence[int]) -> tuple[list[str], int]:
        """Leading blocks of the prompt in the store (at least one token is always computed)."""
        if self.store is None:
            return [], 0
        bs = self.config.block_size
        usable = (len(prompt) - 1) // bs
        hashes = block_hashes(prompt[: usable * bs], bs, self.model_config.identity)
        hits = self.store.longest_prefix(hashes)
        return hashes[:hits], hits * bs

    # ---- carrying out the books' commands -----------------------------------------------

    def _run(self, commands: list[Command]) -> None:
        for c in commands:
            if isinstance(c, Send):
                self._send(c.engine_id, c.message)
            elif isinstance(c, Emit):
                stream = self._streams.get(c.request_id)
                if stream is not None:
                    stream.put_nowait(c.event)
            elif isinstance(c, RetryAfter):
                asyncio.get_running_loop().call_later(c.delay_s, self._retry, c.request_id)
            else:
                self._wake.set()

    def _retry(self, request_id: str) -> None:
        self._run(self.books.retry_due(request_id))

    def _send(self, engine_id: int, msg: ctl.ToEngine) -> None:
        self._router.send_multipart([str(engine_id).encode(), wire.encode(msg)])

    # ---- loops -----------------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        assert self._scheduler is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self._run(self.books.schedule(self._scheduler))
                if self.books.num_live == 0:
                    self.books.check_integrity()
            except Exception:
                logger.exception("scheduling pass failed")

    async def _control_loop(self) -> None:
        while True:
            frames = await self._router.recv_multipart()
            try:
                self._on_frames(frames)
            except Exception:
                logger.exception("handling an engine's message failed")

    def _on_frames(self, frames: list[bytes]) -> None:
        """One engine report: the ROUTER's identity frame names the sender."""
        try:
            if len(frames) != 2:
                raise wire.FrameRejected("frames", f"{len(frames)} frames")
            identity, data = frames
            if not identity.isdigit() or int(identity) not in self._expected:
                raise wire.FrameRejected("identity", f"unknown engine {identity[:32]!r}")
            sender = int(identity)
            msg = wire.decode_to_scheduler(data)
            if isinstance(msg, ctl.Hello):
                if msg.engine_id != sender or self.books.ledger.alive(sender):
                    raise wire.FrameRejected("identity", f"Hello for engine {msg.engine_id} "
                                                         f"from engine {sender}")
                self._run(self.books.engine_joined(msg))
            elif isinstance(msg, ctl.EngineStats):
                if msg.engine_id != sender:
                    raise wire.FrameRejected("identity", "stats for another engine")
                self.metrics.record(sender, msg.counters, time.monotonic())
            else:
                self._run(self.books.on_message(sender, msg))
        except wire.FrameRejected as exc:
            self.metrics.count_rejected(exc.reason)
            logger.warning("dropped an engine frame: %s", exc)

    async def _supervise_loop(self) -> None:
        assert self._procs is not None
        while True:
            await asyncio.sleep(SUPERVISE_INTERVAL_S)
            for engine_id in self._procs.poll_dead():
                logger.error("engine %d died; re-running its requests elsewhere. Log tail:\n%s",
                             engine_id, log_tail(self._log_path(engine_id), 15))
                self.metrics.forget(engine_id)
                self._run(self.books.engine_died(engine_id))

    # ---- metrics ---------------------------------------------------------------------------

    def metrics_snapshot(self) -> BackendMetrics:
        waiting = self.books.num_waiting
        return self.metrics.snapshot(self.books.ledger, num_waiting=waiting,
                                     num_running=self.books.num_live - waiting)

    def counters(self) -> dict[int, dict[str, float]]:
        """Latest raw counters per engine (bytes per path, NIC stats, store stats)."""
        return dict(self.metrics.counters)
