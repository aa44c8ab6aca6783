"""Emulated NICs: software bandwidth shaping shared across threads and processes.

A NIC port is full duplex: a TX lane and an RX lane, each with its own bandwidth. Each lane
keeps a *theoretical arrival time* (`next_free_s`, the virtual instant the lane is free
again) in a `SharedCounters` file, so every process that opens the same `NicSpec.path`
shares the same link (an SNIC is shared by all engines of a node; a CNIC by the threads of
its engine). A transfer of n bytes is cut into chunks; each chunk reserves the slot
`[start, start + chunk/rate)` and the caller sleeps until the slot ends: `start` is
`next_free_s` when the lane is busy or went idle less than `burst_s` ago, else `now` (no
credit for idle time); later chunks of the same transfer start where its previous chunk
ended (the transfer was backlogged all along), so a transfer takes nbytes/rate on a free
lane however late its thread wakes up, and `burst_s` absorbs the small gaps between
back-to-back transfers. This is GCRA, the virtual-scheduling form of a token
bucket; throughput can never exceed the rate because slots never overlap.

Two traffic classes share a lane (DualPath's CNIC-centric isolation):

- `TrafficClass.MODEL` (high priority): model-execution collectives. Always reserves the
  next slot (FIFO among high-priority chunks).
- `TrafficClass.KV` (low priority, work-conserving): KV-cache and storage traffic. A KV chunk
  is admitted only when no high-priority transfer is in progress on that lane and the lane
  is idle (so high traffic waits behind at most one KV chunk), or when the high class has
  used `high_weight / low_weight` times a chunk since the last KV chunk (weighted round
  robin, default 99:1, so KV is never starved). With no high traffic KV gets the full rate.

`NicSpec(isolation=False)` turns the arbitration off (both classes FIFO), the "no traffic
isolation" baseline. `bandwidth_bytes_s=None` is an unlimited NIC (Oracle): bytes are still
counted, nothing waits. All times are `time.monotonic()` (CLOCK_MONOTONIC, system-wide on
Linux, hence comparable across processes of one host).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from dualpath.core.errors import ConfigError
from dualpath.core.tos import TOS_KV, TOS_MODEL
from dualpath.transfer.shared_state import SharedCounters


class TrafficClass(enum.IntEnum):
    """Priority class of a transfer on a lane."""

    MODEL = 0  # high priority: model-execution collectives (all-to-all, all-gather)
    KV = 1  # low priority: KV blocks, storage I/O


# IP TOS byte a socket of each class marks its packets with, so a kernel-shaped compute
# interface (the netns testbed, a real switch) can queue the classes apart: DSCP EF (46) for
# model-execution traffic, DSCP CS1 (8, "lower effort") for KV.
TOS_BY_CLASS: dict[TrafficClass, int] = {TrafficClass.MODEL: TOS_MODEL, TrafficClass.KV: TOS_KV}


class Direction(enum.IntEnum):
    TX = 0  # bytes leaving this NIC (sends, storage writes)
    RX = 1  # bytes arriving at this NIC (receives, storage reads)


# Per-lane slots: next_free_s, high bytes since the last KV chunk, then per class _CLASS_SLOTS.
_LANE_HEAD = 2
_BYTES, _CHUNKS, _BUSY_S, _ACTIVE, _QUEUED, _TRANSFERS, _WAIT_S = range(7)
_CLASS_SLOTS = 7
_LANE_SLOTS = _LANE_HEAD + 2 * _CLASS_SLOTS
_NUM_SLOTS = 2 * _LANE_SLOTS

# Below this slot length the per-chunk cost (lock + sleep, ~20-100 us in CPython) would
# dominate, so at high emulated rates chunks grow to at least this many seconds of traffic.
_MIN_CHUNK_S = 0.0005


@dataclass(frozen=True)
class NicSpec:
    """How to open one emulated NIC; picklable, so a launcher hands it to engine processes.

    path: the shared state file (same path = same NIC); /dev/shm is the fastest place.
    bandwidth_bytes_s: per direction; None = unlimited (bytes counted, never delayed).
    chunk_bytes: pacing granularity; high-priority traffic waits behind at most ~one KV chunk.
    burst_s: GCRA tolerance: a reservation continues a busy period that ended up to this
        long ago (absorbs wake-up jitter of paced senders).
    """

    name: str
    path: str
    bandwidth_bytes_s: float | None
    chunk_bytes: int = 256 * 1024
    burst_s: float = 0.005
    high_weight: int = 99
    low_weight: int = 1
    isolation: bool = True

    def __post_init__(self) -> None:
        if self.bandwidth_bytes_s is not None and self.bandwidth_bytes_s <= 0:
            raise ConfigError(f"NIC {self.name}: bandwidth must be > 0 or None (unlimited)")
        if self.chunk_bytes <= 0 or self.burst_s < 0:
            raise ConfigError(f"NIC {self.name}: chunk_bytes must be > 0 and burst_s >= 0")
        if self.high_weight <= 0 or self.low_weight <= 0:
            raise ConfigError(f"NIC {self.name}: class weights must be > 0")

    @property
    def unlimited(self) -> bool:
        return self.bandwidth_bytes_s is None


@dataclass(frozen=True)
class Slot:
    """The virtual transmission interval a transfer got: [start_s, end_s] (monotonic)."""

    start_s: float
    end_s: float


@dataclass(frozen=True)
class LaneStats:
    """Counters of one (direction, class) lane since the NIC file was created.

    queue_wait_s sums, over finished transfers, the time spent beyond their own
    transmission time (time waiting for the link). active_transfers and queued_bytes are
    the current queue: transfers in progress and their bytes not yet transmitted.
    """

    bytes: int
    chunks: int
    busy_s: float
    active_transfers: int
    queued_bytes: int
    transfers: int
    queue_wait_s: float


@dataclass(frozen=True)
class NicStats:
    """A snapshot of a NIC; `lanes` is keyed "tx.model", "tx.kv", "rx.model", "rx.kv"."""

    name: str
    bandwidth_bytes_s: float | None
    time_s: float
    lanes: dict[str, LaneStats]

    def flat(self) -> dict[str, float]:
        """Flat metric names, e.g. {"tx.kv.bytes": ..., "rx.model.busy_s": ...}."""
        out: dict[str, float] = {}
        for lane, stats in self.lanes.items():
            for field, value in vars(stats).items():
                out[f"{lane}.{field}"] = float(value)
        return out


class EmulatedNic:
    """One emulated NIC port (both directions). Thread safe; share across processes by path."""

    def __init__(self, spec: NicSpec) -> None:
        self.spec = spec
        self._state = SharedCounters(spec.path, _NUM_SLOTS)
        rate = spec.bandwidth_bytes_s
        self._chunk_bytes = spec.chunk_bytes if rate is None else max(
            spec.chunk_bytes, int(rate * _MIN_CHUNK_S))
        self._low_credit_bytes = spec.high_weight / spec.low_weight * self._chunk_bytes

    def transmit(
        self,
        nbytes: int,
        traffic_class: TrafficClass = TrafficClass.KV,
        direction: Direction = Direction.TX,
        *,
        earliest_start_s: float | None = None,
    ) -> Slot:
        """Block until `nbytes` have passed this NIC's lane; return the slot they used.

        earliest_start_s lets a transfer claim lane time from the past when the lane was
        idle then (cut-through: a receiver backdates to when the message began arriving).
        """
        t0 = time.monotonic()
        if nbytes <= 0:
            return Slot(t0, t0)
        base = int(direction) * _LANE_SLOTS
        cls = base + _LANE_HEAD + int(traffic_class) * _CLASS_SLOTS
        rate = self.spec.bandwidth_bytes_s
        if rate is None:
            with self._state.locked() as v:
                v[cls + _BYTES] += nbytes
                v[cls + _CHUNKS] += 1
                v[cls + _TRANSFERS] += 1
            return Slot(t0, t0)
        with self._state.locked() as v:
            v[cls + _ACTIVE] += 1
            v[cls + _QUEUED] += nbytes
        low = traffic_class == TrafficClass.KV and self.spec.isolation
        high_active = base + _LANE_HEAD + int(TrafficClass.MODEL) * _CLASS_SLOTS + _ACTIVE
        first_start: float | None = None
        end = t0
        floor = earliest_start_s
        remaining = nbytes
        try:
            while remaining > 0:
                chunk = min(remaining, self._chunk_bytes)
                duration = chunk / rate
                while True:
                    with self._state.locked() as v:
                        now = time.monotonic()
                        next_free = v[base]
                        admitted = (not low
                                    or (v[high_active] == 0 and next_free <= now)
                                    or v[base + 1] >= self._low_credit_bytes)
                        if admitted:
                            if floor is not None:
                                start = max(next_free, floor)
                            elif next_free >= now - self.spec.burst_s:
                                start = next_free  # continues a busy period: absorb jitter
                            else:
                                start = now  # the lane was idle: no credit for idle time
                            end = start + duration
                            v[base] = end
                            if traffic_class == TrafficClass.KV:
                                v[base + 1] = 0.0
                            else:
                                v[base + 1] += chunk
                            v[cls + _BYTES] += chunk
                            v[cls + _CHUNKS] += 1
                            v[cls + _BUSY_S] += duration
                            v[cls + _QUEUED] -= chunk
                            break
                    # Not admitted: a KV chunk waits for the lane to drain (or for a poll
                    # interval while a high-priority transfer is between chunks).
                    time.sleep(max(next_free - now, min(duration, 0.0005)))
                if first_start is None:
                    first_start = start
                # The rest of this transfer is backlogged from now on: its next chunk may
                # start where this one ends even if this thread wakes up late.
                floor = end
                remaining -= chunk
                delay = end - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        finally:
            finished = time.monotonic()
            with self._state.locked() as v:
                v[cls + _ACTIVE] -= 1
                v[cls + _QUEUED] -= remaining
                if remaining == 0:
                    v[cls + _TRANSFERS] += 1
                    v[cls + _WAIT_S] += max(0.0, finished - t0 - nbytes / rate)
        return Slot(first_start if first_start is not None else t0, end)

    def stats(self) -> NicStats:
        """A consistent snapshot of every lane's counters."""
        values = self._state.snapshot()
        lanes: dict[str, LaneStats] = {}
        for direction in Direction:
            for klass in TrafficClass:
                o = int(direction) * _LANE_SLOTS + _LANE_HEAD + int(klass) * _CLASS_SLOTS
                lanes[f"{direction.name.lower()}.{klass.name.lower()}"] = LaneStats(
                    bytes=int(values[o + _BYTES]),
                    chunks=int(values[o + _CHUNKS]),
                    busy_s=values[o + _BUSY_S],
                    active_transfers=int(values[o + _ACTIVE]),
                    queued_bytes=int(values[o + _QUEUED]),
                    transfers=int(values[o + _TRANSFERS]),
                    queue_wait_s=values[o + _WAIT_S],
                )
        return NicStats(self.spec.name, self.spec.bandwidth_bytes_s, time.monotonic(), lanes)

    def reset(self) -> None:
        """Zero the counters and the lane clocks of this NIC for every process sharing it.

        For the launcher, before any engine uses the NIC (not while transfers run)."""
        self._state.reset()

    def close(self) -> None:
        """Release the shared state mapping (other openers are unaffected). Idempotent."""
        self._state.close()
