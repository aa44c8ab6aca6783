"""Tiny TCP programs that run inside testbed hosts (`python -S traffic.py CMD`, stdlib only):
what the tests and `dualpath bench isolation` use to load and probe the shaped links.

- `sink`  receives `--streams` concurrent bulk streams and prints, per stream, one JSON line:
  bytes, and the monotonic times of the first byte, of byte `--warmup-bytes` and of the last.
- `blast` sends a bulk stream with a TOS byte: `--bytes N`, or an on/off schedule
  (`--idle-s`, `--load-s`, `--rounds`), and prints its idle and load windows; a load window
  ends when its last byte is acknowledged (TIOCOUTQ is 0), so the idle one starts drained.
- `echo`  echoes fixed-size messages; a connection's first byte is the TOS its replies carry.
- `probe` request/response round trips over one connection per TOS in `--tos`, visited in
  that order, one every `--interval-s`, for `--seconds` or until SIGTERM; then prints every
  sample `[t, rtt_s]` (rtt -1: no reply within `--timeout-s`, the connection is replaced).
- `ping`  one connect + round trip; exit status 0 on success, 1 on failure or timeout.

All times are `time.monotonic()`, one clock for every namespace of the machine. With
`--realtime` a program asks for SCHED_FIFO (root), so that on a loaded machine the latency it
measures is the network's and not the CPU run queue's.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import sys
import termios
import threading
import time
from typing import Any

_CHUNK = 64 * 1024
_CONNECT_S = 20.0  # servers start in parallel with their clients: retry connects this long


def _realtime(enabled: bool, cpu: int | None = None) -> bool:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if not enabled:
        return False
    if os.sched_getscheduler(0) == os.SCHED_FIFO:  # started under chrt
        return True
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        return False
    return True


def _listen(bind: str, port: int) -> socket.socket:
    srv = socket.create_server((bind, port), reuse_port=False, backlog=64)
    return srv


def _connect(target: str, tos: int, timeout_s: float = _CONNECT_S) -> socket.socket:
    host, port = target.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)  # SYN carries it too
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(max(0.1, min(2.0, deadline - time.monotonic())))
        try:
            sock.connect((host, int(port)))
            sock.settimeout(None)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


_emit_lock = threading.Lock()


def _emit(obj: dict[str, Any]) -> None:
    with _emit_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def _drink(conn: socket.socket, warmup_bytes: int) -> None:
    buf = bytearray(_CHUNK)
    total, first, warm, last, warm_bytes = 0, None, None, None, None
    with conn:
        while n := conn.recv_into(buf):
            last = time.monotonic()
            if first is None:
                first = last
            total += n
            if warm is None and total >= warmup_bytes:
                warm, warm_bytes = last, total
    _emit({"bytes": total, "first_s": first, "last_s": last, "warm_s": warm,
           "warm_bytes": warm_bytes})


def sink(args: argparse.Namespace) -> int:
    _realtime(args.realtime, args.cpu)
    srv = _listen(args.bind, args.port)
    streams = []
    for _ in range(args.streams):  # concurrent streams, one thread each
        conn, _addr = srv.accept()
        streams.append(threading.Thread(target=_drink, args=(conn, args.warmup_bytes)))
        streams[-1].start()
    for thread in streams:
        thread.join()
    return 0


def blast(args: argparse.Namespace) -> int:
    _realtime(args.realtime, args.cpu)
    sock = _connect(args.to, args.tos)
    if args.sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, args.sndbuf)
    payload = memoryview(os.urandom(_CHUNK))
    sent, windows = 0, list[list[Any]]()
    if args.bytes:
        start = time.monotonic()
        while sent < args.bytes:
            n = min(_CHUNK, args.bytes - sent)
            sock.sendall(payload[:n])
            sent += n
        windows.append([start, time.monotonic()])
    else:
        time.sleep(args.lead_s)
        for _ in range(args.rounds):
            idle_start = time.monotonic()
            time.sleep(args.idle_s)
            windows.append([idle_start, time.monotonic(), "idle"])
            start = time.monotonic()
            while time.monotonic() - start < args.load_s:
                sock.sendall(payload)
                sent += len(payload)
            _drain(sock)  # the load lasts until the last byte is acknowledged
            windows.append([start, time.monotonic(), "load"])
    sock.shutdown(socket.SHUT_WR)
    sock.close()
    _emit({"bytes": sent, "windows": windows})
    return 0


def _drain(sock: socket.socket, timeout_s: float = 10.0) -> None:
    """Wait until the kernel holds no unacknowledged byte of `sock` (TIOCOUTQ == 0)."""
    deadline = time.monotonic() + timeout_s
    buf = bytearray(4)
    while time.monotonic() < deadline:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
        if int.from_bytes(buf, sys.byteorder) == 0:
            return
        time.sleep(0.001)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            return None
        buf += part
    return bytes(buf)


def _echo_one(conn: socket.socket, size: int) -> None:
    with conn:
        tos = _recv_exact(conn, 1)
        if tos is None:
            return
        conn.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos[0])
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while (msg := _recv_exact(conn, size)) is not None:
            conn.sendall(msg)


def echo(args: argparse.Namespace) -> int:
    _realtime(args.realtime, args.cpu)
    srv = _listen(args.bind, args.port)
    while True:
        conn, _addr = srv.accept()
        threading.Thread(target=_echo_one, args=(conn, args.size), daemon=True).start()


def _open_probe(target: str, tos: int, timeout_s: float) -> socket.socket:
    sock = _connect(target, tos)
    sock.sendall(bytes([tos]))
    sock.settimeout(timeout_s)
    return sock


def _round_trip(sock: socket.socket, msg: bytes) -> float | None:
    t0 = time.monotonic()
    try:
        sock.sendall(msg)
        if _recv_exact(sock, len(msg)) is None:
            return None
    except OSError:  # timeout included
        return None
    return time.monotonic() - t0


def probe(args: argparse.Namespace) -> int:
    realtime = _realtime(args.realtime, args.cpu)
    order = [int(t, 0) for t in args.tos.split(",")]
    socks = {tos: _open_probe(args.to, tos, args.timeout_s) for tos in dict.fromkeys(order)}
    samples: dict[int, list[list[float]]] = {tos: [] for tos in socks}
    msg = bytes(args.size)
    end = time.monotonic() + args.seconds
    stop = threading.Event()  # SIGTERM ends the run early, results still printed
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    i = 0
    while time.monotonic() < end and not stop.is_set():
        tos = order[i % len(order)]
        i += 1
        t = time.monotonic()
        rtt = _round_trip(socks[tos], msg)
        samples[tos].append([t, -1.0 if rtt is None else rtt])
        if rtt is None:  # the stream is out of step now: start a fresh one
            socks[tos].close()
            socks[tos] = _open_probe(args.to, tos, args.timeout_s)
        time.sleep(args.interval_s)
    _emit({"realtime": realtime, "samples": {str(k): v for k, v in samples.items()}})
    return 0


def ping(args: argparse.Namespace) -> int:
    try:
        sock = _connect(args.to, args.tos, timeout_s=args.timeout_s)
        sock.sendall(bytes([args.tos]))
        sock.settimeout(args.timeout_s)
        rtt = _round_trip(sock, bytes(args.size))
        sock.close()
    except OSError as exc:
        _emit({"ok": False, "error": str(exc)})
        return 1
    _emit({"ok": rtt is not None, "rtt_s": rtt})
    return 0 if rtt is not None else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualpath.testbed.traffic")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sink")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--warmup-bytes", type=int, default=0)
    p.add_argument("--realtime", action="store_true")
    p.add_argument("--cpu", type=int, default=None)
    p.set_defaults(func=sink)
    p = sub.add_parser("blast")
    p.add_argument("--to", required=True, help="HOST:PORT")
    p.add_argument("--tos", type=lambda s: int(s, 0), default=0)
    p.add_argument("--bytes", type=int, default=0)
    p.add_argument("--lead-s", type=float, default=0.0)
    p.add_argument("--idle-s", type=float, default=1.0)
    p.add_argument("--load-s", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--sndbuf", type=int, default=0)
    p.add_argument("--realtime", action="store_true")
    p.add_argument("--cpu", type=int, default=None)
    p.set_defaults(func=blast)
    for name, func in (("echo", echo), ("probe", probe), ("ping", ping)):
        p = sub.add_parser(name)
        p.add_argument("--size", type=int, default=64)
        p.add_argument("--realtime", action="store_true")
        p.add_argument("--cpu", type=int, default=None)
        if name == "echo":
            p.add_argument("--bind", default="0.0.0.0")
            p.add_argument("--port", type=int, required=True)
        else:
            p.add_argument("--to", required=True, help="HOST:PORT")
            p.add_argument("--timeout-s", type=float, default=2.0)
        if name == "probe":
            p.add_argument("--tos", default="0xb8")
            p.add_argument("--seconds", type=float, default=5.0)
            p.add_argument("--interval-s", type=float, default=0.005)
        if name == "ping":
            p.add_argument("--tos", type=lambda s: int(s, 0), default=0)
        p.set_defaults(func=func)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
