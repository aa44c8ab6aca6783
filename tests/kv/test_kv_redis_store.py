"""RedisKVStore against a real redis-server: layer ranges, prefix lookups from other clients and
processes, values corrupted inside the server, a killed and restarted server, capacity.

Corruption is done with a plain redis-py client straight on the server (SETRANGE, SET, HSET),
bypassing the store, as a bad disk, a buggy writer or an operator would.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import random
from pathlib import Path

import numpy as np
import pytest
import redis
from kv_helpers import SMALL, hex_hash, random_block
from redis_helpers import isolated_url, start_server

from dualpath.core.errors import ConfigError, StoreError
from dualpath.kv import BlockGeometry, FileKVStore, block_hashes, open_store
from dualpath.kv.block_file import payload_offset
from dualpath.kv.open_store import store_kind
from dualpath.kv.redis_server import RedisServerProcess, free_port
from dualpath.kv.redis_store import RedisKVStore

LOGGER = "dualpath.kv.redis_store"
SMOLLM2 = BlockGeometry(30, 64, 1536)  # the real model's geometry: 2.9 MB Full Blocks


@pytest.fixture
def url(redis_server: RedisServerProcess) -> str:
    return isolated_url(redis_server)


def _raw(url: str) -> redis.Redis:
    return redis.Redis.from_url(url.split("?")[0])


def _key(store: RedisKVStore, h: str) -> str:
    g = store.geometry
    return f"{store.key_prefix}:{g.num_layers}x{g.block_tokens}x{g.bytes_per_token_per_layer}:{h}"


def _flip(raw: redis.Redis, key: str, offset: int) -> None:
    byte = raw.getrange(key, offset, offset)
    raw.setrange(key, offset, bytes([byte[0] ^ 0x01]))


def test_layer_reads_are_slices_of_the_full_block(url: str) -> None:
    store = RedisKVStore(url, SMOLLM2)
    chain = block_hashes(np.arange(3 * 64), 64, "test-model")
    blocks = [random_block(i, SMOLLM2) for i in range(3)]
    store.put_many(list(zip(chain, blocks, strict=True)))
    for h, b in zip(chain, blocks, strict=True):
        full = store.get(h)
        assert full is not None and np.array_equal(full, b)
        for layer in (0, 17, SMOLLM2.num_layers - 1):
            lb = store.get_layer(h, layer)
            assert lb is not None and np.array_equal(lb, full[layer : layer + 1])
    per_layer = [store.get_layer_many(chain, layer) for layer in range(SMOLLM2.num_layers)]
    for j, b in enumerate(blocks):
        joined = np.concatenate([per_layer[layer][j] for layer in range(SMOLLM2.num_layers)])  # type: ignore[misc]
        assert np.array_equal(joined, b)
    s = store.stats()
    assert s.layer_hits == 3 * 3 + 3 * SMOLLM2.num_layers and s.corrupt_blocks == 0


def test_stored_value_is_the_block_file_byte_for_byte(url: str, tmp_path: Path) -> None:
    store = RedisKVStore(url, SMALL)
    files = FileKVStore(tmp_path / "files", SMALL)
    h, b = hex_hash(5), random_block(5)
    store.put(h, b)
    files.put(h, b)
    on_disk = next((tmp_path / "files").rglob(f"{h}.kvb")).read_bytes()
    assert _raw(url).get(_key(store, h)) == on_disk
    assert len(on_disk) == payload_offset(SMALL, len(h)) + SMALL.full_block_bytes


def _put_chain(url: str, n: int) -> None:
    store = RedisKVStore(url, SMALL)
    store.put_many([(hex_hash(100 + i), random_block(i)) for i in range(n)])
    store.close()


def test_prefix_lookup_sees_other_clients_and_processes(url: str) -> None:
    reader = RedisKVStore(url, SMALL)
    chain = [hex_hash(100 + i) for i in range(12)]
    assert reader.longest_prefix(chain) == 0
    writer = RedisKVStore(url, SMALL)  # another client object (another connection pool)
    writer.put_many([(h, random_block(i)) for i, h in enumerate(chain[:4])])
    assert reader.longest_prefix(chain) == 4
    proc = mp.get_context("spawn").Process(target=_put_chain, args=(url, 9))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    assert reader.longest_prefix(chain) == 9
    assert reader.contains_many(chain[7:11]) == [True, True, False, False]
    got = reader.get(chain[8])
    assert got is not None and np.array_equal(got, random_block(8))
    # 200 blocks: several EXISTS round trips (64 per trip); stops at the first gap.
    long_chain = [hex_hash(1000 + i) for i in range(200)]
    writer.put_many([(h, random_block(0)) for h in long_chain[:150]])
    assert reader.longest_prefix(long_chain) == 150
    assert reader.longest_prefix(long_chain[:64]) == 64


def _read_in_child(store: RedisKVStore, hashes: list[str], ok: mp.Queue) -> None:  # type: ignore[type-arg]
    got = store.get_many(hashes)
    ok.put(all(g is not None and np.array_equal(g, random_block(i)) for i, g in enumerate(got)))


def test_a_forked_child_can_use_the_parents_store(url: str) -> None:
    store = RedisKVStore(url, SMALL, io_threads=2, pipeline_blocks=1)
    hashes = [hex_hash(i) for i in range(4)]
    store.put_many([(h, random_block(i)) for i, h in enumerate(hashes)])
    assert all(g is not None for g in store.get_many(hashes))  # threads + connections exist now
    ctx = mp.get_context("fork")
    ok = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(store, hashes, ok))
    child.start()
    assert ok.get(timeout=60) is True
    child.join(60)
    assert child.exitcode == 0 and all(g is not None for g in store.get_many(hashes))


def test_models_and_geometries_share_one_server(url: str) -> None:
    wide = BlockGeometry(SMALL.num_layers, SMALL.block_tokens, SMALL.bytes_per_token_per_layer * 2)
    a, b = RedisKVStore(url, SMALL), RedisKVStore(url, wide)
    h = hex_hash(1)
    a.put(h, random_block(1))
    assert b.get(h) is None and b.longest_prefix([h]) == 0
    b.put(h, random_block(1, wide))
    got_a, got_b = a.get(h), b.get(h)
    assert got_a is not None and np.array_equal(got_a, random_block(1))
    assert got_b is not None and np.array_equal(got_b, random_block(1, wide))
    # Two models' prompts with the same tokens have different hashes (identity is hashed in).
    assert block_hashes([1, 2, 3, 4], 4, "model-a") != block_hashes([1, 2, 3, 4], 4, "model-b")


def _assert_corrupt_miss(store: RedisKVStore, h: str, caplog: pytest.LogCaptureFixture,
                         reason: str, layer: int | None = None) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        got = store.get(h) if layer is None else store.get_layer(h, layer)
    assert got is None
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and h in lines[0] and reason in lines[0], lines
    s = store.stats()
    assert s.corrupt_blocks == 1 and s.quarantined_blocks == 1
    assert store.longest_prefix([h]) == 0  # moved aside: never read again
    quarantined = _raw(store.url).keys(f"{store.key_prefix}:quarantine:*")
    assert len(quarantined) == 1 and _raw(store.url).ttl(quarantined[0]) > 0
    store.put(h, random_block(9))  # the next put rewrites the block
    again = store.get(h)
    assert again is not None and np.array_equal(again, random_block(9))


@pytest.mark.parametrize("where", ["payload", "header", "layer"])
def test_bit_flipped_in_the_server_is_a_counted_miss(url: str, caplog: pytest.LogCaptureFixture,
                                                     where: str) -> None:
    store = RedisKVStore(url, SMALL)
    h = hex_hash(7)
    store.put(h, random_block(7))
    off = payload_offset(SMALL, len(h))
    if where == "header":
        _flip(_raw(url), _key(store, h), 40)  # inside the key field: the header CRC fails
        _assert_corrupt_miss(store, h, caplog, "header checksum mismatch")
    elif where == "payload":
        _flip(_raw(url), _key(store, h), off + 2 * SMALL.layer_block_bytes + 5)
        _assert_corrupt_miss(store, h, caplog, "checksum mismatch in layer 2")
    else:  # a layer read verifies that layer alone, even with the block's CRCs cached
        assert store.get_layer(h, 1) is not None
        _flip(_raw(url), _key(store, h), off + 1 * SMALL.layer_block_bytes)
        assert store.get_layer(h, 0) is not None  # other layers are still good
        _assert_corrupt_miss(store, h, caplog, "checksum mismatch in layer 1", layer=1)


def test_truncated_wrong_key_and_wrong_type_values_are_misses(url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = RedisKVStore(url, SMALL)
    raw = _raw(url)
    good, other = hex_hash(1), hex_hash(2)
    store.put(good, random_block(1))
    value = raw.get(_key(store, good))
    assert value is not None
    cases = {
        hex_hash(3): ("truncated value", lambda k: raw.set(k, value[:-7])),
        hex_hash(4): ("oversized value", lambda k: raw.set(k, value + b"x")),
        hex_hash(5): ("stored key does not match", lambda k: raw.set(k, value)),  # another block's bytes
        hex_hash(6): ("not a string value", lambda k: raw.hset(k, "f", "v")),
        hex_hash(8): ("truncated value", lambda k: raw.set(k, b"")),
    }
    for h, (_, make) in cases.items():
        make(_key(store, h))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for h in cases:
            assert store.get(h) is None
        for h in (hex_hash(3), hex_hash(5)):
            cases[h][1](_key(store, h))  # again, for the layer path
            assert store.get_layer(h, 0) is None
    messages = " ".join(r.getMessage() for r in caplog.records if r.name == LOGGER)
    for reason, _ in cases.values():
        assert reason in messages
    assert store.stats().corrupt_blocks == len(cases) + 2
    assert store.longest_prefix([good, other]) == 1 and store.get(good) is not None
    assert store.get(other) is None and store.stats().corrupt_blocks == len(cases) + 2  # absent != corrupt


def test_no_value_can_crash_a_reader(url: str) -> None:
    """Random bytes, random lengths and headers with hostile fields are all misses."""
    store = RedisKVStore(url, SMALL)
    raw = _raw(url)
    rng = random.Random(3)
    good = hex_hash(1)
    store.put(good, random_block(1))
    template = raw.get(_key(store, good))
    assert template is not None
    hashes = [hex_hash(10 + i) for i in range(60)]
    for i, h in enumerate(hashes):
        if i % 3 == 0:
            value = rng.randbytes(rng.choice([0, 1, 8, 40, 4096, len(template)]))
        else:  # a real header with random bytes written over a random span of it
            value = bytearray(template.replace(good.encode(), h.encode()))
            at = rng.randrange(0, 200)
            value[at : at + 8] = rng.randbytes(8)
            value = bytes(value[: rng.choice([len(value), len(value) - 1, 100])])
        raw.set(_key(store, h), value)
    assert store.get_many(hashes) == [None] * len(hashes)
    for layer in range(SMALL.num_layers):
        assert store.get_layer_many(hashes, layer) == [None] * len(hashes)
    assert store.stats().get_hits == 0 and store.get(good) is not None


def test_killed_server_raises_store_error_then_restart_brings_blocks_back(tmp_path: Path) -> None:
    # appendfsync always: every put is on disk before it returns, so even SIGKILL keeps it.
    server = start_server(tmp_path / "redis", appendfsync="always")
    try:
        store = RedisKVStore(server.url, SMALL)
        chain = [hex_hash(i) for i in range(5)]
        store.put_many([(h, random_block(i)) for i, h in enumerate(chain)])
        port = server.config.port
        server.kill()
        for call in (lambda: store.get(chain[0]), lambda: store.get_layer(chain[0], 1),
                     lambda: store.longest_prefix(chain), lambda: store.contains_many(chain),
                     lambda: store.put(hex_hash(99), random_block(99)),
                     lambda: store.get_many(chain)):
            with pytest.raises(StoreError, match=f"unreachable.*127.0.0.1:{port}"):
                call()
        server.start()  # same port, same AOF directory
        assert store.longest_prefix(chain) == 5  # the same client object, reconnected
        for i, h in enumerate(chain):
            got = store.get(h)
            assert got is not None and np.array_equal(got, random_block(i))
        assert store.stats().corrupt_blocks == 0
        server.stop()  # a clean shutdown also keeps everything; idle pooled connections die
        server.start()
        assert store.longest_prefix(chain) == 5  # first call after the restart: reconnects
        got = store.get(chain[4])
        assert got is not None and np.array_equal(got, random_block(4))
        assert RedisKVStore(server.url, SMALL).longest_prefix(chain) == 5
    finally:
        server.stop()


def test_full_server_drops_puts_or_evicts_never_fails(tmp_path: Path) -> None:
    g = BlockGeometry(8, 64, 2048)  # 1 MiB blocks: 20 of them against a cap of ~8
    cap = 8 * (payload_offset(g, 64) + g.full_block_bytes) + (1 << 20)  # + the server's own ~1 MB
    refusing = start_server(tmp_path / "noeviction", appendonly=False, maxmemory_bytes=cap,
                            maxmemory_policy="noeviction")
    evicting = start_server(tmp_path / "lru", appendonly=False, maxmemory_bytes=cap,
                            maxmemory_policy="allkeys-lru")
    try:
        items = [(h, random_block(i % 3, g)) for i, h in enumerate(block_hashes(np.arange(20 * 64), 64, "cap"))]
        hashes = [h for h, _ in items]
        full = RedisKVStore(refusing.url, g)
        full.put_many(items)
        s = full.stats()
        assert s.puts == 20 and 0 < s.puts_dropped < 20
        assert sum(full.contains_many(hashes)) == 20 - s.puts_dropped
        lru = RedisKVStore(evicting.url, g)
        lru.put_many(items)
        assert lru.stats().puts_dropped == 0
        info = lru.server_info()
        assert info["evicted_keys"] > 0 and info["used_memory"] <= cap * 1.1
        got = lru.get_many(hashes)
        stored = sum(x is not None for x in got)
        assert 0 < stored < 20 and lru.stats().corrupt_blocks == 0
        for (_, block), x in zip(items, got, strict=True):
            assert x is None or np.array_equal(x, block)
        # Nothing is put after the reads, so blocks can only have gone since (reply buffers
        # count against maxmemory too, so reading near the cap evicts more).
        still = lru.contains_many(hashes)
        assert all(x is not None for x, c in zip(got, still, strict=True) if c)
    finally:
        refusing.stop()
        evicting.stop()


def test_open_store_picks_the_backend_from_the_spec(url: str, tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "a"), SMALL), FileKVStore)
    assert isinstance(open_store(f"file://{tmp_path / 'b'}", SMALL, io_threads=2), FileKVStore)
    store = open_store(url, SMALL, io_threads=2, pipeline_blocks=2)
    assert isinstance(store, RedisKVStore)
    store.put(hex_hash(1), random_block(1))
    assert store.get_many([hex_hash(1)] * 5)[4] is not None
    with pytest.raises(ConfigError, match="unknown KV store URL scheme 'http'"):
        open_store("http://example.invalid/kv", SMALL)
    with pytest.raises(ConfigError, match="maxmemory"):
        open_store(url, SMALL, max_bytes=1 << 30)
    with pytest.raises(ConfigError, match="does not take bogus"):
        open_store(str(tmp_path / "c"), SMALL, bogus=1)
    with pytest.raises(ConfigError, match="bad Redis store URL"):
        open_store("redis://127.0.0.1:notaport/0", SMALL)
    with pytest.raises(StoreError, match="unreachable while opening"):
        open_store(f"redis://127.0.0.1:{free_port()}/0", SMALL)


def test_unix_socket_url_and_scheme_names(tmp_path: Path) -> None:
    assert store_kind("rediss://kv.example:6380/0") == store_kind("unix:///x.sock") == "redis"
    assert store_kind("relative/dir") == store_kind("file:///abs") == "file"
    sock = tmp_path / "redis.sock"
    server = start_server(tmp_path / "unix", extra_args=("--unixsocket", str(sock), "--unixsocketperm", "700"))
    try:
        store = open_store(f"unix://{sock}?db=1&prefix=over-unix", SMALL)
        store.put(hex_hash(3), random_block(3))
        assert isinstance(store, RedisKVStore) and store.key_prefix == "over-unix"
        assert _raw(server.url).dbsize() == 0  # db 0 untouched
        assert redis.Redis.from_url(server.url[: -len("/0")] + "/1").dbsize() == 1
        got = store.get(hex_hash(3))
        assert got is not None and np.array_equal(got, random_block(3))
    finally:
        server.stop()


def test_password_is_required_and_never_logged(tmp_path: Path) -> None:
    server = start_server(tmp_path / "auth", password="s3cret-pw")
    try:
        assert RedisKVStore(server.url, SMALL).longest_prefix([hex_hash(1)]) == 0
        wrong = server.url.replace("s3cret-pw", "wrong-pw")
        with pytest.raises(StoreError) as info:
            RedisKVStore(wrong, SMALL)
        assert "wrong-pw" not in str(info.value) and "***" in str(info.value)
        with pytest.raises(StoreError):
            RedisKVStore(server.url.replace(":s3cret-pw@", ""), SMALL).get(hex_hash(1))
    finally:
        server.stop()
