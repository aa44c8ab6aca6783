"""The DualPath cluster as a server `Backend`: the scheduler process.

A thin I/O shell around `RequestBooks` (the pure owner of every request's life and of the
load the scheduler sees): it starts the local engine processes (and admits `dualpath node`
agents that bring remote ones), receives every engine's reports on the CURVE-secured control
plane, runs `dualpath.scheduler` when the books ask for it, and carries out the books'
commands — send a message to an engine, emit an event to a client, retry later.

Loops, none of which one message can end, each restarted if it fails (`supervision`):
control (engine and node frames, decoded by the validating `wire` decoder; a bad frame is
counted and dropped), scheduling (woken by the books, ticking at least once a second) and
the engine watch (a local engine process that exits, or any engine silent for longer than the
heartbeat timeout, is an engine death; local engines are restarted with backoff).
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

from dualpath import wire
from dualpath.core.backend import (
    AdmissionLimits,
    Backend,
    BackendMetrics,
    Readiness,
    Tokenizer,
)
from dualpath.core.config import ClusterConfig
from dualpath.core.errors import EngineError, StoreError
from dualpath.core.requests import FinishEvent, GenerateEvent, GenerateRequest
from dualpath.core.secret import ClusterSecret
from dualpath.core.systems import system_spec
from dualpath.kv.hashing import block_hashes
from dualpath.kv.layout import BlockGeometry
from dualpath.kv.open_store import open_store, store_options
from dualpath.runtime.books import BooksConfig, Command, Emit, RequestBooks, RetryAfter, Send
from dualpath.runtime.cluster_metrics import ClusterMetrics, stored_bytes
from dualpath.runtime.control_plane import ControlPlane
from dualpath.runtime.engine_watch import EngineWatch
from dualpath.runtime.launcher import EngineProcesses, engine_specs, log_tail
from dualpath.runtime.membership import Membership
from dualpath.runtime.supervision import Supervisor
from dualpath.scheduler import (
    GlobalScheduler,
    RequestInfo,
    SchedulerConfig,
    alpha_tokens,
    beta_tokens,
    scheduler_config_for_system,
)
from dualpath.transfer.curve import NODE, ClusterKeys, engine_of
from dualpath.wire import control as ctl

logger = logging.getLogger(__name__)

# A transfer retry waits until the engines' fast-fail window for the peer has passed, so the
# next attempt really tries the peer again (and a dead peer has been noticed meanwhile).
RETRY_MARGIN_S = 0.5


class LocalCluster(Backend):
    """Scheduler process + its engines, local and joined (see module doc)."""

    def __init__(self, config: ClusterConfig, *, record_scheduler_calls: bool = False) -> None:
        """`record_scheduler_calls` keeps every scheduler call's inputs and the placements
        actually dispatched (`scheduler_calls`), so tests can replay them (as the simulator's
        `record_scheduler_inputs` does)."""
        from dualpath.model.source import load_config_and_tokenizer

        self.config = config
        self.spec = system_spec(config.system)
        # Only the config and tokenizer: the weights live in the engines (same identity, so
        # the block hashes of both sides agree).
        self.model_config, tok = load_config_and_tokenizer(
            config.model, dtype=config.dtype, seed=config.model_seed,
            quantization=config.quantization)
        self._tokenizer = tok
        self.geometry = BlockGeometry.from_model_config(self.model_config, config.block_size)
        self.store = (open_store(config.store_path, self.geometry, **store_options(config))
                      if config.use_kv_store else None)
        self.books = RequestBooks(BooksConfig(
            block_size=config.block_size, layerwise=self.spec.layerwise,
            eos_token_ids=tuple(tok.eos_token_ids or self.model_config.eos_token_ids),
            transfer_retry_delay_s=config.peer_retry_after_s + RETRY_MARGIN_S,
        ), self._lookup, record_calls=record_scheduler_calls)
        self.metrics = ClusterMetrics()
        self.membership = Membership(config)
        self.supervisor = Supervisor()
        self._streams: dict[str, asyncio.Queue[GenerateEvent]] = {}
        self._wake = asyncio.Event()
        self._drained_s = time.monotonic()
        self._started = False
        self._run_dir = ""
        self._control: ControlPlane | None = None
        self._procs: EngineProcesses | None = None
        self._watch: EngineWatch | None = None
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
        return AdmissionLimits(max_running=self.config.max_running_requests,
                               max_waiting=self.config.max_waiting_requests)

    @property
    def scheduler_calls(self) -> list[tuple[list[RequestInfo], Any, list[tuple[Any, ...]]]]:
        return self.books.scheduler_calls

    @property
    def control_address(self) -> str:
        return self._control.address if self._control is not None else ""

    def readiness(self) -> Readiness:
        """Ready when started, every loop ticks, and a prefill and a decode engine answered
        a heartbeat recently; otherwise the reasons it is not."""
        if not self._started:
            return Readiness(False, ("starting or stopping",))
        reasons = self.supervisor.problems(time.monotonic())
        now = time.monotonic()
        for role in ("prefill", "decode"):
            live = [e.engine_id for e in self.books.ledger.live_engines() if e.role == role]
            if not self.membership.recently_heard(live, now):
                reasons.append(f"no {role} engine answered within "
                               f"{self.config.engine_heartbeat_timeout_s:g} s")
        return Readiness(not reasons, tuple(reasons))

    def is_ready(self) -> bool:
        return self.readiness().ready

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._run_dir = tempfile.mkdtemp(prefix="dualpath-", dir=base)
        secret_path = self.config.cluster_secret_path or os.path.join(self._run_dir, "secret")
        secret = ClusterSecret.load_or_create(secret_path)
        keys = ClusterKeys(secret, self.config.max_engines - 1)
        self._control = ControlPlane(keys, self.membership.allows, self.metrics.rejected)
        address = self._control.open(self.config.internal_host, self.config.control_port)
        self._procs = EngineProcesses(self.config, address, self._run_dir, secret_path)
        specs = engine_specs(self.config) if self.config.local_engines else []
        self.membership.add_local([s.engine_id for s in specs],
                                  self.config.num_nodes if specs else 0)
        self._watch = EngineWatch(self._procs, self.membership, self.metrics, self._run_dir)
        for spec in specs:
            self._watch.start(spec, time.monotonic())
        if specs:
            await self._await_hellos(len(specs))
        self._scheduler = GlobalScheduler(self._scheduler_config())
        self.supervisor.start("control", self._control_loop)
        self.supervisor.start("schedule", self._schedule_loop)
        self.supervisor.start("engines", self._engine_loop)
        self._started = True
        logger.info("cluster ready: %d local engines (%s), control plane %s, run dir %s",
                    len(specs), self.config.system, address, self._run_dir)

    async def _await_hellos(self, expected: int) -> None:
        assert self._procs is not None and self._control is not None
        deadline = time.monotonic() + self.config.engine_start_timeout_s
        while len(self.books.ledger.live_engines()) < expected:
            dead = self._procs.poll_dead()
            if dead:
                tail = log_tail(self._log_path(dead[0]))
                await self.shutdown()
                raise EngineError(f"engine {dead[0]} exited during start-up; log tail:\n{tail}")
            if time.monotonic() > deadline:
                await self.shutdown()
                raise EngineError("engines did not start within engine_start_timeout_s")
            if await self._control.poll(200):
                self._on_frames(*await self._control.recv())

    def _scheduler_config(self) -> SchedulerConfig:
        """α from the configured SNIC; β from the slowest prefill engine's profile (joined
        engines profile themselves the same way; the first ones fix β)."""
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
        self._started = False
        await self.supervisor.stop()
        self._run(self.books.shutdown())
        if self._control is not None:
            for engine_id in list(self.books.ledger.engines):
                with contextlib.suppress(Exception):
                    self._control.send(str(engine_id).encode(), ctl.Shutdown())
        if self._procs is not None:
            await asyncio.to_thread(self._procs.stop)
            self._procs = None
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._run_dir and not os.environ.get("DUALPATH_KEEP_RUN_DIR"):
            shutil.rmtree(self._run_dir, ignore_errors=True)

    def kill_engine(self, engine_id: int) -> None:
        """Kill a local engine process hard (failure tests, chaos drills)."""
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
        try:
            hits = self.store.longest_prefix(hashes)
        except StoreError as exc:  # the store is down: recompute rather than fail
            logger.warning("KV store lookup failed (%s); computing the whole prompt", exc)
            return [], 0
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
        if self._control is not None:
            self._control.send(str(engine_id).encode(), msg)

    # ---- loops -----------------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        assert self._scheduler is not None
        while True:
            self.supervisor.tick("schedule")
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: wait_for can lose a cancel
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()
            self._run(self.books.schedule(self._scheduler))
            if self.books.num_live == 0:
                self.books.check_integrity()

    async def _control_loop(self) -> None:
        assert self._control is not None
        while True:
            self.supervisor.tick("control")
            if await self._control.poll(1000):
                frames, user = await self._control.recv()
                try:
                    self._on_frames(frames, user)
                except Exception:
                    logger.exception("handling an internal frame failed")
            if not await self._control.poll(0):
                self._drained_s = time.monotonic()  # every frame sent before now was read

    def _on_frames(self, frames: list[bytes], user: str | None) -> None:
        """One frame from an engine or a node agent; `user` is who CURVE says sent it."""
        try:
            if len(frames) != 2:
                raise wire.FrameRejected("frames", f"{len(frames)} frames")
            identity, data = frames
            msg = wire.decode_to_scheduler(data)
            if user == NODE:
                self._on_node(identity, msg)
                return
            engine = engine_of(user)
            if engine is None or identity != str(engine).encode():
                raise wire.FrameRejected("identity", f"frame from {user or 'nobody'} as "
                                                     f"{identity[:32]!r}")
            self.membership.heard(engine, time.monotonic())
            if isinstance(msg, ctl.Hello):
                self._on_hello(engine, msg)
            elif not self.books.ledger.alive(engine):
                # Declared dead (silent too long), talking again: it restarts clean and
                # rejoins, instead of finishing attempts that were re-run elsewhere.
                self._send(engine, ctl.Shutdown())
            elif isinstance(msg, ctl.EngineStats):
                if msg.engine_id != engine:
                    raise wire.FrameRejected("identity", "stats for another engine")
                self.metrics.record(engine, msg.counters, time.monotonic())
            elif isinstance(msg, ctl.NodeJoin | ctl.NodePing):
                raise wire.FrameRejected("identity", "a node message from an engine")
            else:
                self._run(self.books.on_message(engine, msg))
        except wire.FrameRejected as exc:
            self.metrics.rejected.count(exc.reason)
            logger.warning("dropped an internal frame: %s", exc)

    def _on_hello(self, engine: int, msg: ctl.Hello) -> None:
        if msg.engine_id != engine or self.books.ledger.alive(engine):
            raise wire.FrameRejected("identity", f"Hello for engine {msg.engine_id} from "
                                                 f"engine {engine}")
        expected_node = self.membership.node_of(engine)
        if expected_node is not None and msg.node_id != expected_node:
            raise wire.FrameRejected("identity", f"engine {engine} claims node {msg.node_id}")
        rejoined = engine in self.books.ledger.engines
        self._run(self.books.engine_joined(msg))
        if rejoined:
            self.metrics.engine_restarts += 1
            logger.info("engine %d rejoined", engine)
        elif self._started:
            logger.info("engine %d (%s, node %d) joined at %s", engine, msg.role, msg.node_id,
                        msg.data_address)

    def _on_node(self, identity: bytes, msg: ctl.ToScheduler) -> None:
        assert self._control is not None
        self._control.send(identity, self.membership.on_node_message(msg, time.monotonic()))

    async def _engine_loop(self) -> None:
        assert self._watch is not None
        while True:
            self.supervisor.tick("engines")
            await asyncio.sleep(0.25)
            alive = [e.engine_id for e in self.books.ledger.live_engines()]
            # Silence is judged up to the last time every queued frame had been read, so a
            # scheduler that was itself starved of CPU does not declare its engines dead.
            now = time.monotonic()
            for engine_id in self._watch.dead(alive, now, min(now, self._drained_s)):
                self._run(self.books.engine_died(engine_id))

    # ---- metrics ---------------------------------------------------------------------------

    def metrics_snapshot(self) -> BackendMetrics:
        waiting = self.books.num_waiting
        return self.metrics.snapshot(
            self.books.ledger, num_waiting=waiting, num_running=self.books.num_live - waiting,
            kv_store_bytes=stored_bytes(self.store))

    def counters(self) -> dict[int, dict[str, float]]:
        """Latest raw counters per engine (bytes per path, NIC stats, store stats)."""
        return dict(self.metrics.counters)

