"""What every engine process has: a model replica, its NICs, the shaped KV store, a data-plane
transport, and a control connection to the scheduler.

An engine stands for one GPU. Its CNIC (one per engine) carries everything that enters or
leaves the engine's "GPU" — KV from peers, host-buffer -> model copies, synthetic collectives —
and its node's SNIC (shared with the node's other engines, across processes) carries every
storage byte. The engine loop is the nano-vllm triple: `step()` = schedule, run, postprocess;
data-plane messages arrive on a receiver thread and are handed to `on_data` (subclasses lock
what they share with the loop).

Every frame is decoded by `dualpath.wire`'s validating decoder; a frame that fails — or a data
message whose content does not fit its attempt (`FrameRejected` from a handler) — is dropped
and counted (`wire.rejected.<reason>` in the engine's stats), and never ends a loop or thread.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np
import zmq

from dualpath import wire
from dualpath.core.config import ClusterConfig
from dualpath.core.errors import TransferError
from dualpath.core.secret import ClusterSecret
from dualpath.core.systems import system_spec
from dualpath.engine.data_sender import DataSender
from dualpath.engine.nics import cnic_spec, snic_spec
from dualpath.engine.shaped_store import ShapedStore
from dualpath.engine.token_picker import SharedGuideTokenizer
from dualpath.kv.block_value import value_bytes
from dualpath.kv.layout import BlockGeometry
from dualpath.kv.open_store import open_store, store_options
from dualpath.model.loader import load_model
from dualpath.transfer.base import Message, Transport
from dualpath.transfer.buffer_pool import BufferPool
from dualpath.transfer.curve import ClusterKeys, engine_of, make_client
from dualpath.transfer.nic import EmulatedNic
from dualpath.transfer.zmq_transport import DataSecurity, ZmqTransport
from dualpath.wire import control as ctl
from dualpath.wire.types import AttemptId

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.5
# Chaos drills and tests: "kind=n,kind=n" fails the first n data sends of each message kind.
INJECT_SEND_FAILURES_ENV = "DUALPATH_INJECT_SEND_FAILURES"


class EngineBase:
    """Shared plumbing of prefill and decode engines (see module doc)."""

    role = "engine"

    def __init__(self, config: ClusterConfig, engine_id: int, node_id: int,
                 control_address: str, run_dir: str, secret: ClusterSecret) -> None:
        self.config = config
        self.engine_id = engine_id
        self.node_id = node_id
        self.spec = system_spec(config.system)
        self.model, self.tokenizer = load_model(config.model, seed=config.model_seed,
                                                dtype=config.dtype,
                                                quantization=config.quantization)
        self.model_config = self.model.config
        # Guided decoding's view of the vocabulary. Building it holds the GIL for seconds
        # (about 2 s of CPU for 49k tokens, 7 s on a loaded 2-core machine), which inside the
        # loop would silence the engine's reports past the heartbeat timeout: so it is built
        # here, in the background while the rest starts, and `run` waits for it before Hello.
        self.guides = SharedGuideTokenizer(
            lambda: self.tokenizer.guide_tokenizer(self.model_config.vocab_size))
        self.guides.prewarm()
        self.block_size = config.block_size
        self.geometry = BlockGeometry.from_model_config(self.model_config, config.block_size)
        free_io = self.spec.free_io
        self.snic = EmulatedNic(snic_spec(config, run_dir, node_id, free_io=free_io))
        self.cnic = EmulatedNic(cnic_spec(config, run_dir, engine_id, free_io=free_io))
        # --no-kv-store: nothing is read from or written to the store (it is not even opened).
        self.store = (ShapedStore(open_store(config.store_path, self.geometry,
                                             **store_options(config)), self.snic)
                      if config.use_kv_store else None)
        keys = ClusterKeys(secret, config.max_engines - 1)
        me = keys.engine(engine_id)
        # Data: only other engines may send here (never a node agent or a stranger).
        self.transport = data_transport(config, self.cnic,
                                        DataSecurity(keys, me, _is_engine))
        self.sender = DataSender(self.transport, on_failure=self._send_failed,
                                 failed_for_s=config.peer_retry_after_s,
                                 inject_failures=_injected_failures())
        self.rejections = wire.Rejections()  # control frames and data that fit no attempt
        self._local_aborts: queue.SimpleQueue[AttemptId] = queue.SimpleQueue()
        self._deferred: list[ctl.ToEngine] = []  # read by handle_aborts_now
        self._ctx = zmq.Context()
        self._ctrl = self._ctx.socket(zmq.DEALER)
        self._ctrl.setsockopt(zmq.LINGER, 0)
        self._ctrl.setsockopt(zmq.IDENTITY, str(engine_id).encode())
        make_client(self._ctrl, me, keys.control_server.public)
        self._ctrl.connect(control_address)
        self._ctrl_lock = threading.Lock()
        self._stop = threading.Event()
        self._last_stats_s = 0.0
        self.bytes_read = 0
        # The reader threads' CPU seconds reading blocks (not their waits for buffer room or
        # the SNIC): `runtime_profile` measures what a byte read costs the host from it.
        self.read_cpu_s = 0.0
        self._read_cpu_lock = threading.Lock()
        size = config.pe_buffer_bytes if self.role == "prefill" else config.de_buffer_bytes
        self.buffer = BufferPool(f"{self.role}{engine_id}", size)  # host DRAM buffer
        self._receiver = threading.Thread(target=self._receive_loop, daemon=True,
                                          name=f"engine{engine_id}-data")

    # ---- subclass interface -------------------------------------------------------------

    def kv_capacity_tokens(self) -> int:
        return 0

    def prefill_tokens_per_s(self) -> float:
        return 0.0

    def on_control(self, msg: ctl.ToEngine) -> None:
        """Handle a scheduler message (runs on the loop thread)."""
        raise NotImplementedError

    def on_data(self, msg: Message) -> None:
        """Handle a data-plane message (runs on the receiver thread); raise
        `wire.FrameRejected` for one that does not fit its attempt."""
        raise NotImplementedError

    def step(self) -> bool:
        """Do one unit of work; return False when idle (the loop then waits for messages)."""
        raise NotImplementedError

    def load(self) -> tuple[int, int]:
        """(seq_e, tok_e) as this engine sees them, for stats."""
        return 0, 0

    def extra_counters(self) -> dict[str, float]:
        return {}

    def shutdown(self) -> None:
        """Release subclass resources (threads)."""

    # ---- plumbing ------------------------------------------------------------------------

    def send_control(self, msg: ctl.ToScheduler) -> None:
        with self._ctrl_lock:
            self._ctrl.send(wire.encode(msg))

    def _read_control(self) -> list[ctl.ToEngine]:
        """Every control frame waiting now, decoded; rejected frames are counted (caller
        holds the control lock)."""
        msgs = []
        for _ in range(64):
            if not self._ctrl.poll(0):
                break
            try:
                msgs.append(wire.decode_to_engine(self._ctrl.recv()))
            except wire.FrameRejected as exc:
                self.rejections.count(exc.reason)
                logger.warning("engine %d: dropped a control frame: %s", self.engine_id, exc)
        return msgs

    def run(self) -> None:
        try:  # ready before the engine is (see __init__)
            self.guides()
        except Exception as exc:  # the first request with a grammar fails with it instead
            logger.warning("engine %d: no guided decoding: %s", self.engine_id, exc)
        self._receiver.start()
        self.send_control(ctl.Hello(
            engine_id=self.engine_id, node_id=self.node_id, role=self.role,  # type: ignore[arg-type]
            data_address=self.transport.address, kv_capacity_tokens=self.kv_capacity_tokens(),
            pid=os.getpid(), prefill_tokens_per_s=self.prefill_tokens_per_s(),
        ))
        logger.info("engine %d (%s) ready at %s", self.engine_id, self.role,
                    self.transport.address)
        poller = zmq.Poller()
        poller.register(self._ctrl, zmq.POLLIN)
        busy = False
        try:
            while not self._stop.is_set():
                timeout_ms = 0 if busy else 5
                with self._ctrl_lock:
                    events = dict(poller.poll(timeout_ms))
                    fresh = self._read_control() if events else []
                msgs, self._deferred = [*self._deferred, *fresh], []
                for msg in msgs:
                    if isinstance(msg, ctl.Shutdown):
                        self._stop.set()
                        break
                    self._handle_control(msg)
                while not self._local_aborts.empty():
                    self._handle_control(ctl.Abort(self._local_aborts.get()))
                busy = self.step()
                self._maybe_report()
        finally:
            self.close()

    def _handle_control(self, msg: ctl.ToEngine) -> None:
        try:
            self.on_control(msg)
        except wire.FrameRejected as exc:
            self.rejections.count(exc.reason)
            logger.warning("engine %d: dropped a control message: %s", self.engine_id, exc)
        except Exception:  # one bad assignment must not end the engine's loop
            logger.exception("engine %d: handling %s failed", self.engine_id,
                             type(msg).__name__)

    def handle_aborts_now(self) -> None:
        """For a loop thread blocked inside `step()` (waiting for a peer's KV): act on the
        Aborts that came meanwhile, so a wait for an aborted request ends at once. Every
        control message read here is still handled by the loop afterwards, in order (an
        Abort twice is harmless, and one that overtook its request's assignment is repeated
        after it)."""
        with self._ctrl_lock:
            self._deferred.extend(self._read_control())
        for msg in self._deferred:
            if isinstance(msg, ctl.Abort):
                self._handle_control(msg)
        while not self._local_aborts.empty():
            self._handle_control(ctl.Abort(self._local_aborts.get()))

    def report_transfer_failed(self, attempt: AttemptId, peer_address: str, error: str) -> None:
        """`attempt` lost its KV path to `peer_address`: tell the scheduler (it re-runs or
        ends the request) and drop the attempt here, on the loop thread, as an Abort would.
        Safe from any thread."""
        logger.warning("request %s: transfer with %s failed: %s", attempt, peer_address, error)
        self.send_control(ctl.TransferFailed(self.engine_id, attempt, peer_address,
                                             error[:4096]))
        self._local_aborts.put(attempt)

    def _send_failed(self, attempt: AttemptId, dest: str, exc: TransferError) -> None:
        self.report_transfer_failed(attempt, dest, str(exc))

    def request_stop(self) -> None:
        self._stop.set()

    def read_hit_blocks(self, attempt: AttemptId, hashes: Sequence[str],
                        alive: Callable[[], bool]) -> list[np.ndarray]:
        """Read an attempt's stored prefix into this engine's buffer (reader threads).

        Reserves buffer room first, waiting while the bounded buffer is full (a prefix larger
        than the whole buffer is loaded as far as it fits). Stops at the first missing or
        corrupt block, and on any unexpected error, so the rest is recomputed and the request
        never waits forever. Reports ReadDone to the scheduler. `alive()` turns False when
        the attempt was aborted.
        """
        usable = list(hashes[: self.buffer.capacity_bytes // self.geometry.full_block_bytes])
        blocks: list[np.ndarray] = []
        cpu0 = time.thread_time()
        try:
            while alive():
                try:
                    self.buffer.reserve(attempt, len(usable) * self.geometry.full_block_bytes)
                    break
                except TransferError:
                    time.sleep(0.01)
            for block_hash in usable:
                if not alive() or self.store is None:
                    break
                block = self.store.get(block_hash)
                if block is None:
                    logger.warning("request %s: block %s unreadable; recomputing from there",
                                   attempt, block_hash[:16])
                    break
                blocks.append(block)
        except Exception:
            logger.exception("request %s: storage read failed; recomputing", attempt)
        with self._read_cpu_lock:
            self.read_cpu_s += time.thread_time() - cpu0
        # What crossed the storage network: each block as stored (its header + the Full Block).
        self.bytes_read += sum(value_bytes(self.geometry, h) for h in usable[:len(blocks)])
        self.send_control(ctl.ReadDone(self.engine_id, attempt, len(hashes) * self.block_size,
                                       len(blocks) * self.block_size))
        return blocks

    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.transport.recv(timeout_s=0.1)
                if msg is not None:
                    self.on_data(msg)
            except wire.FrameRejected as exc:
                self.rejections.count(exc.reason)
                logger.warning("engine %d: dropped a data message: %s", self.engine_id, exc)
            except Exception:  # a bad message must not kill the engine's data plane
                logger.exception("engine %d: failed to handle a data message", self.engine_id)

    def _maybe_report(self) -> None:
        now = time.monotonic()
        if now - self._last_stats_s < STATS_INTERVAL_S:
            return
        self._last_stats_s = now
        seq, tok = self.load()
        counters: dict[str, float] = {}
        for prefix, nic in (("snic", self.snic), ("cnic", self.cnic)):
            for key, value in nic.stats().flat().items():
                counters[f"{prefix}.{key}"] = value
        if self.store is not None:
            for key, value in asdict(self.store.stats()).items():
                counters[f"store.{key}"] = float(value)
        counters["buffer.used_bytes"] = float(self.buffer.stats().reserved_bytes)
        counters["load.seq"], counters["load.tok"] = float(seq), float(tok)
        # The process's CPU seconds and the engine's clock at this report: the runtime
        # profile measures what moving KV costs a decode engine's CPU from their deltas.
        counters["process.cpu_s"], counters["process.clock_s"] = time.process_time(), now
        counters["read.cpu_s"] = self.read_cpu_s
        rejected = self.rejections.snapshot()
        for reason, n in self.transport.rejections.snapshot().items():
            rejected[reason] = rejected.get(reason, 0) + n
        for reason, n in rejected.items():
            counters[f"wire.rejected.{reason}"] = float(n)
        mooncake_sent = getattr(self.transport, "payload_bytes_sent", None)
        if mooncake_sent is not None:  # --transfer mooncake
            counters["transfer.mooncake_bytes_sent"] = float(mooncake_sent)
        counters.update(self.extra_counters())
        self.send_control(ctl.EngineStats(engine_id=self.engine_id, counters=counters))

    def close(self) -> None:
        self._stop.set()
        self.shutdown()
        self.sender.close()
        self.transport.close()
        self._ctrl.close(0)
        self._ctx.term()
        self.snic.close()
        self.cnic.close()


def _is_engine(user: str) -> bool:
    return engine_of(user) is not None


def _injected_failures() -> dict[str, int]:
    spec = os.environ.get(INJECT_SEND_FAILURES_ENV, "")
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, count = part.partition("=")
        out[kind] = int(count or 1)
    return out


def data_transport(config: ClusterConfig, cnic: EmulatedNic,
                   security: DataSecurity) -> Transport:
    """The engine's KV data plane: zmq (default) or Mooncake's transfer engine (`transfer`)."""
    bind = f"tcp://{config.internal_host}:0"
    if config.transfer == "mooncake":
        from dualpath.transfer.mooncake_transport import MooncakeTransport

        return MooncakeTransport(bind, cnic=cnic, protocol=config.mooncake_protocol,
                                 device_name=config.mooncake_device,
                                 hostname=config.internal_host,
                                 arena_bytes=config.mooncake_arena_bytes, security=security)
    return ZmqTransport(bind, cnic=cnic, security=security)
