"""KV-cache storage: block hashing, Full/Layer Block layouts, the prefix index and stores.

numpy only (no torch): the torch <-> bytes conversion lives in `dualpath.model.kv_bytes`.
"""

from dualpath.kv.file_store import FileKVStore
from dualpath.kv.hashing import DEFAULT_BLOCK_SIZE, block_hashes
from dualpath.kv.layout import (
    BlockGeometry,
    BlockLayoutError,
    concat_layers,
    layer_view,
    split_layers,
)
from dualpath.kv.open_store import open_store
from dualpath.kv.prefix_index import PrefixIndex
from dualpath.kv.store import KVStore, MemoryKVStore, StoreStats

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "BlockGeometry",
    "BlockLayoutError",
    "FileKVStore",
    "KVStore",
    "MemoryKVStore",
    "PrefixIndex",
    "StoreStats",
    "block_hashes",
    "concat_layers",
    "layer_view",
    "open_store",
    "split_layers",
]
