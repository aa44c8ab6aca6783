"""Does the kernel isolate the MODEL class from a saturating KV stream? Measured on a testbed.

The receiver runs a bulk sink and an echo server; the sender runs a bulk blaster on an on/off
schedule (`rounds` x [idle `phase_s`, load `phase_s`]: adjacent idle and loaded phases see the
same machine load; a load phase lasts until its last byte is acknowledged) and, all along,
request/response probes in three classes, one connection each: MODEL (TOS EF) in one process,
KV (TOS CS1) and unmarked taking turns in another (so that the slow ones do not thin out the
MODEL samples). A probe counts for a phase when it starts `settle_s` after the phase began
(the bulk stream has filled its queue). Probes, echo server and blaster ask for SCHED_FIFO,
so that on a loaded machine the figures are the network's, not the CPU run queue's, and the
blaster keeps the link full (`realtime` in the result says whether they got it); probes and
echo server run on the first CPU, the bulk stream's ends on the last (`pin_cpus`), so the
kernel's work on the bulk packets is not charged to the probes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass

from dualpath.core.errors import ConfigError
from dualpath.testbed.commands import TestbedError
from dualpath.testbed.host import Direction, Host
from dualpath.testbed.rate import traffic_argv
from dualpath.testbed.shaping import TOS_KV, TOS_MODEL
from dualpath.testbed.spec import Network

PROBE_CLASSES = {"model": TOS_MODEL, "kv": TOS_KV, "unmarked": 0}
_PROBERS = ((TOS_MODEL,), (TOS_KV, 0))  # one process each


@dataclass(frozen=True)
class IsolationConfig:
    rounds: int = 3
    phase_s: float = 2.0
    settle_s: float = 0.3
    interval_s: float = 0.003
    probe_bytes: int = 64
    load_tos: int = TOS_KV
    realtime: bool = True
    pin_cpus: bool = True  # probes on one CPU, the bulk stream on another (when there are 2)
    sink_port: int = 5201
    echo_port: int = 5202

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.phase_s <= self.settle_s or self.interval_s < 0:
            raise ConfigError("need rounds >= 1, phase_s > settle_s and interval_s >= 0")


@dataclass(frozen=True)
class LatencyStats:
    count: int
    lost: int  # no reply within the probe timeout
    p50_s: float
    p99_s: float
    max_s: float


@dataclass(frozen=True)
class ClassLatency:
    idle: LatencyStats
    loaded: LatencyStats

    @property
    def p99_ratio(self) -> float:
        return self.loaded.p99_s / self.idle.p99_s if self.idle.p99_s > 0 else math.nan


@dataclass(frozen=True)
class IsolationResult:
    link_rate_bytes_s: float
    load_wire_bytes_s: float  # what the bottleneck shaper passed, per loaded second
    realtime: bool
    classes: dict[str, ClassLatency]  # "model", "kv", "unmarked"

    @property
    def load_utilisation(self) -> float:
        return self.load_wire_bytes_s / self.link_rate_bytes_s

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name, cls in self.classes.items():
            prefix = "" if name == "model" else f"{name}_"
            for phase, stats in (("idle", cls.idle), ("loaded", cls.loaded)):
                out[f"{prefix}{phase}_p50_s"] = stats.p50_s
                out[f"{prefix}{phase}_p99_s"] = stats.p99_s
                out[f"{prefix}{phase}_max_s"] = stats.max_s
                out[f"{prefix}{phase}_samples"] = stats.count
                out[f"{prefix}{phase}_lost"] = stats.lost
            out[f"{prefix}p99_ratio"] = cls.p99_ratio
        out.update(link_rate_bytes_s=self.link_rate_bytes_s,
                   load_wire_bytes_s=self.load_wire_bytes_s,
                   load_utilisation=self.load_utilisation, realtime_probes=self.realtime)
        return out


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 1]) of `values`; NaN when empty."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _stats(rtts: list[float]) -> LatencyStats:
    ok = [r for r in rtts if r >= 0]
    return LatencyStats(count=len(ok), lost=len(rtts) - len(ok), p50_s=percentile(ok, 0.5),
                        p99_s=percentile(ok, 0.99), max_s=max(ok) if ok else math.nan)


def _json_line(proc: subprocess.Popen[str], what: str, timeout_s: float) -> dict[str, object]:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        raise TestbedError(f"{what} did not finish in {timeout_s:.0f} s") from exc
    if proc.returncode != 0 or not out.strip():
        raise TestbedError(f"{what} failed (exit {proc.returncode})")
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def _cpus(pin: bool) -> tuple[int | None, int | None]:
    """(probe CPU, load CPU): the first and the last CPU this process may use, or no pinning.
    The bulk stream's packets are processed (softirq) mostly on the CPU that sends or
    receives them; keeping them off the probes' CPU keeps that work out of the latencies."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return cpus[0], cpus[-1]


def _bottleneck(sender: Host, receiver: Host) -> tuple[float, Host, Direction]:
    """The tighter of the sender's TX and the receiver's RX shaper: (rate, host, direction)."""
    tx, rx = sender.spec.cnic_bytes_s, receiver.spec.cnic_bytes_s
    if tx is not None and (rx is None or tx <= rx):
        return tx, sender, Direction.TX
    if rx is not None:
        return rx, receiver, Direction.RX
    raise ConfigError(f"neither {sender.name}'s nor {receiver.name}'s CNIC is shaped")


def measure_isolation(sender: Host, receiver: Host,
                      config: IsolationConfig = IsolationConfig()) -> IsolationResult:
    """Saturate the compute path `sender` -> `receiver` with bulk traffic of
    `config.load_tos` and probe all three classes over it. The bottleneck is the tighter of
    the sender's TX and the receiver's RX shaper (either must be shaped)."""
    rate, shaped_host, direction = _bottleneck(sender, receiver)
    addr = receiver.address(Network.COMPUTE)
    rt = config.realtime
    total_s = 2 * config.rounds * config.phase_s
    lead_s = 0.5  # the probers connect meanwhile
    limit_s = lead_s + 3 * total_s + 30  # a drain cannot take more than a phase
    probe_cpu, load_cpu = _cpus(config.pin_cpus)
    servers = [receiver.popen(traffic_argv("sink", "--port", str(config.sink_port), realtime=rt,
                                           cpu=load_cpu), stdout=subprocess.DEVNULL),
               receiver.popen(traffic_argv("echo", "--port", str(config.echo_port),
                                           "--size", str(config.probe_bytes), realtime=rt,
                                           cpu=probe_cpu))]
    before = shaped_host.shaper_counters(Network.COMPUTE, direction).link.sent_bytes
    probers: list[subprocess.Popen[str]] = []
    try:
        for tos_values in _PROBERS:
            probers.append(sender.popen(
                traffic_argv("probe", "--to", f"{addr}:{config.echo_port}",
                             "--tos", ",".join(str(t) for t in tos_values), "--seconds",
                             str(limit_s), "--interval-s", str(config.interval_s), "--size",
                             str(config.probe_bytes), realtime=rt, cpu=probe_cpu),
                stdout=subprocess.PIPE, text=True))
        blaster = sender.popen(
            traffic_argv("blast", "--to", f"{addr}:{config.sink_port}", "--tos",
                         str(config.load_tos), "--lead-s", str(lead_s), "--idle-s",
                         str(config.phase_s), "--load-s", str(config.phase_s), "--rounds",
                         str(config.rounds), realtime=rt, cpu=load_cpu),
            stdout=subprocess.PIPE, text=True)
        load = _json_line(blaster, "bulk sender", limit_s)
        for proc in probers:
            proc.terminate()  # a prober prints its samples and exits on SIGTERM
        results = [_json_line(proc, "prober", 30) for proc in probers]
    finally:
        for proc in [*servers, *probers]:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
    wire = shaped_host.shaper_counters(Network.COMPUTE, direction).link.sent_bytes - before
    windows = [(float(w[0]), float(w[1]), str(w[2])) for w in load["windows"]]  # type: ignore[attr-defined]
    loaded_s = sum(end - start for start, end, kind in windows if kind == "load")
    samples: dict[str, list[list[float]]] = {}
    for result in results:
        samples.update(result["samples"])  # type: ignore[call-overload]
    classes = {}
    for name, tos in PROBE_CLASSES.items():
        phase: dict[str, list[float]] = {"idle": [], "load": []}
        for t, rtt in samples.get(str(tos), []):
            for start, end, kind in windows:
                if start + config.settle_s <= t <= end:
                    phase[kind].append(rtt)
        classes[name] = ClassLatency(_stats(phase["idle"]), _stats(phase["load"]))
    return IsolationResult(link_rate_bytes_s=rate, load_wire_bytes_s=wire / loaded_s,
                           realtime=all(bool(r["realtime"]) for r in results), classes=classes)
