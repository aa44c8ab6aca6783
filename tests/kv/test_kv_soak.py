"""Store soak: several writer processes write 3x `max_bytes` of multi-turn conversations into one
capped root while reader processes read whatever was written.

Shown: the bytes on disk never exceed the cap, nor the root's ledger (checked by a monitor
every 50 ms and by every writer every 10 puts, each time under the root lock, so the listing is
one instant); every read that returns data returns exactly the bytes that were put (no
evicted, partly written or corrupt block is ever served); the most recent conversations of
every writer are still whole (`longest_prefix` finds every block, including the system prompt
block every conversation continues, which nobody reads and which plain LRU would have evicted
first).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dualpath.kv import BlockGeometry, FileKVStore
from dualpath.kv.capacity import SizeLedger
from dualpath.kv.store_root import block_file_bytes

G = BlockGeometry(num_layers=4, block_tokens=16, bytes_per_token_per_layer=64)  # 4 KiB payload
FILE = block_file_bytes(G)
SYSTEM = "5" * 64
ACTIVE = 3  # conversations each writer keeps going at once
TURN_BLOCKS = 2
TURNS = 4
CHECK_EVERY_PUTS = 10  # each writer measures the store this often
MONITOR_S = 0.05  # and so does the test, from outside


def content(block_hash: str) -> np.ndarray:
    rng = np.random.default_rng(int(block_hash[:15], 16))
    return rng.integers(0, 256, size=G.full_block_shape, dtype=np.uint8)


def disk_bytes(root: Path) -> int:
    """Bytes of every block, temp and quarantined file under the root's geometry directories.
    Counted once per inode: a directory listing can return a file renamed during the listing
    under both its names. Not a snapshot by itself: see `measure`."""
    sizes: dict[int, int] = {}
    for p in root.glob("kv-*/**/*"):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue  # evicted or renamed while we looked
        if p.name != "dualpath-kvstore.json" and not p.is_dir():
            sizes[st.st_ino] = st.st_size
    return sum(sizes.values())


def measure(root: Path) -> tuple[int, int]:
    """(bytes on disk, ledger total) at one instant: taken under the root's lock, which every
    eviction and every reservation holds, so no block is deleted or admitted while we list
    (a listing without it can count a block evicted mid-listing and its replacement)."""
    with SizeLedger(root).locked() as view:
        return disk_bytes(root), view.get() or 0


def _writer(root: str, worker: int, cap: int, budget_bytes: int, out: str) -> None:
    store = FileKVStore(root, G, max_bytes=cap)
    rng = random.Random(worker)
    log = open(f"{out}/hashes-{worker}.txt", "w")  # noqa: SIM115 - the process's lifetime
    store.put(SYSTEM, content(SYSTEM))
    convs: list[list[str]] = []  # chains (system prompt first), oldest first
    finished: list[list[str]] = []
    last_write: dict[int, float] = {}  # id(chain) -> when its last block was put
    written, puts, worst = 0, 0, 0
    serial = 0
    while written < budget_bytes:
        if len(convs) < ACTIVE:
            convs.append([SYSTEM])
        conv = convs[rng.randrange(len(convs))]
        for _ in range(TURN_BLOCKS):
            serial += 1
            h = f"{worker:02x}{serial:014x}" + f"{rng.getrandbits(192):048x}"
            store.put(h, content(h), parent=conv[-1])
            conv.append(h)
            last_write[id(conv)] = time.time()
            log.write(h + "\n")
            log.flush()
            written += FILE
            puts += 1
            if puts % CHECK_EVERY_PUTS == 0:
                on_disk, ledger = measure(Path(root))
                assert on_disk <= ledger <= cap, (on_disk, ledger, cap)
                worst = max(worst, on_disk)
        if len(conv) == 1 + TURNS * TURN_BLOCKS:
            convs.remove(conv)
            finished.append(conv)
    recent = finished + convs  # every conversation, with when it was last written to
    with open(f"{out}/result-{worker}.txt", "w") as f:
        f.write(f"{worst} {store.stats().evictions} {store.stats().puts_dropped}\n")
        for chain in recent:
            f.write(f"{last_write.get(id(chain), 0.0)!r} " + " ".join(chain) + "\n")


def _reader(root: str, out: str, writers: int, stop_file: str) -> None:
    # A verifier: its reads do not refresh recency, so "most recent" is the writers' order.
    store = FileKVStore(root, G, touch_reads=False)
    rng = random.Random(7)
    seen: list[str] = []
    offsets = [0] * writers
    hits = misses = wrong = 0
    while not Path(stop_file).exists():
        for w in range(writers):
            try:
                with open(f"{out}/hashes-{w}.txt") as f:
                    f.seek(offsets[w])
                    chunk = f.read()
            except FileNotFoundError:
                continue
            lines = chunk.split("\n")
            complete = lines[:-1]  # a last partial line is read next time
            offsets[w] += sum(len(x) + 1 for x in complete)
            seen.extend(complete)
        if not seen:
            time.sleep(0.01)
            continue
        h = seen[rng.randrange(len(seen))] if rng.random() < 0.5 else seen[-1 - rng.randrange(min(20, len(seen)))]
        if rng.random() < 0.5:
            got = store.get(h)
            expect = content(h)
        else:
            layer = rng.randrange(G.num_layers)
            got = store.get_layer(h, layer)
            expect = content(h)[layer : layer + 1]
        if got is None:
            misses += 1
        elif np.array_equal(got, expect):
            hits += 1
        else:
            wrong += 1
    s = store.stats()
    with open(f"{out}/reader-{Path(stop_file).name}.txt", "w") as f:
        f.write(f"{hits} {misses} {wrong} {s.corrupt_blocks} {s.evicted_reads}\n")


def _soak(tmp_path: Path, *, writers: int, readers: int, cap_blocks: int) -> dict[str, int]:
    root, out = tmp_path / "store", tmp_path / "out"
    out.mkdir()
    cap = cap_blocks * FILE
    budget = 3 * cap // writers  # 3x the cap in all
    FileKVStore(root, G)  # create the root before the processes race for it
    worst = [0, 0]  # bytes on disk, ledger
    over: list[tuple[int, int]] = []  # instants with more on disk than the ledger says
    done = threading.Event()

    def monitor() -> None:
        while not done.is_set():
            on_disk, ledger = measure(root)
            worst[0] = max(worst[0], on_disk)
            worst[1] = max(worst[1], ledger)
            if on_disk > ledger:
                over.append((on_disk, ledger))
            time.sleep(MONITOR_S)

    ctx = mp.get_context("spawn")
    stop = [str(out / f"stop-{r}") for r in range(readers)]
    procs = [ctx.Process(target=_writer, args=(str(root), w, cap, budget, str(out)))
             for w in range(writers)]
    rprocs = [ctx.Process(target=_reader, args=(str(root), str(out), writers, stop[r]))
              for r in range(readers)]
    watcher = threading.Thread(target=monitor)
    watcher.start()
    for p in [*procs, *rprocs]:
        p.start()
    try:
        for p in procs:
            p.join(timeout=600)
            assert p.exitcode == 0
    finally:
        for s in stop:
            Path(s).touch()
        for p in rprocs:
            p.join(timeout=60)
        done.set()
        watcher.join()
    assert all(p.exitcode == 0 for p in rprocs)

    store = FileKVStore(root, G)
    evictions = 0
    recent: list[tuple[float, list[str]]] = []
    for w in range(writers):
        lines = (out / f"result-{w}.txt").read_text().splitlines()
        writer_worst, writer_evictions, dropped = map(int, lines[0].split())
        assert writer_worst <= cap and dropped == 0
        evictions += writer_evictions
        for when, *chain in (line.split() for line in lines[1:]):
            recent.append((float(when), chain))
    # The most recently written conversations (across writers, which run at their own
    # speeds), as many as fill half the cap, must be whole.
    budget_blocks = cap_blocks // 2
    checked = 0
    for _, chain in sorted(recent, key=lambda r: r[0], reverse=True):
        if budget_blocks < len(chain):
            break
        budget_blocks -= len(chain) - 1
        assert store.longest_prefix(chain) == len(chain), chain
        checked += 1
    assert checked >= writers
    assert worst[0] <= cap and worst[1] <= cap and not over, (worst, cap, over[:3])
    assert disk_bytes(root) <= cap and store.stored_bytes() <= cap
    totals = {"hits": 0, "misses": 0, "wrong": 0, "corrupt": 0, "evicted_reads": 0}
    for r in range(readers):
        hits, misses, wrong, corrupt, evicted_reads = map(
            int, (out / f"reader-stop-{r}.txt").read_text().split())
        totals["hits"] += hits
        totals["misses"] += misses
        totals["wrong"] += wrong
        totals["corrupt"] += corrupt
        totals["evicted_reads"] += evicted_reads
    assert totals["wrong"] == 0 and totals["corrupt"] == 0, totals
    assert totals["hits"] > 0 and evictions > 0, (totals, evictions)
    return {**totals, "evictions": evictions, "max_disk_bytes": worst[0], "cap": cap}


def test_soak_three_writers_stay_under_the_cap(tmp_path: Path) -> None:
    _soak(tmp_path, writers=3, readers=1, cap_blocks=200)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_long_soak_many_writers_and_readers(tmp_path: Path) -> None:
    figures = _soak(tmp_path, writers=4, readers=2, cap_blocks=1500)
    print("soak:", figures)
