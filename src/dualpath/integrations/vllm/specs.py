"""What the connector's scheduler side tells its worker side each step (plain frozen data).

vLLM pickles the step's `KVConnectorMetadata` from the scheduler process to the worker
process; ours wraps one `StepPlan`. Block ids are vLLM's (one KV cache group).

Prefill instance (P):
- `PrepareLoad` — a request with a stored hit entered vLLM's async-load wait: PE path, read
  the hit blocks into the PE buffer; DE path, wait for D's `Ready`.
- `LayerLoad` — this step's forward computes the request: copy its hit into the paged cache
  layer by layer, just before each attention layer (PE: from the buffer; DE: from D).
- `LayerSave` — after each attention layer, send the KV of tokens [start, end) to D.

Decode instance (D):
- `ReceivePrompt` — a request entered the async-load wait: stage its whole prompt's KV in
  the DE buffer (DE path: read the hit from storage and serve it to P; then receive the
  rest from P), copy it into `block_ids`, persist the new full blocks.
- `PersistBlock` — after this step's forward, block `block_id` is full: write it.

Both: `Forget` — vLLM finished the request; drop its state (and tell the peer if the relay
was still running).
"""

from __future__ import annotations

from dataclasses import dataclass

from dualpath.integrations.vllm.params import Side


@dataclass(frozen=True)
class PrepareLoad:
    req_id: str
    key: str
    side: Side
    peer: str
    hashes: tuple[str, ...]  # the hit blocks this instance must load (from `first_block` on)
    first_block: int  # hit blocks before this one are already in vLLM's cache


@dataclass(frozen=True)
class LayerLoad:
    req_id: str
    key: str
    side: Side
    block_ids: tuple[int, ...]  # destination blocks of hit blocks first_block..hit_blocks-1
    first_block: int


@dataclass(frozen=True)
class LayerSave:
    req_id: str
    key: str
    peer: str
    start_token: int
    end_token: int
    block_ids: tuple[int, ...]  # blocks covering [start_token // N * N, end_token)


@dataclass(frozen=True)
class ReceivePrompt:
    req_id: str
    key: str
    side: Side
    peer: str
    hit_tokens: int
    prompt_tokens: int
    first_token: int  # tokens before this are already in vLLM's cache (local prefix hit)
    block_ids: tuple[int, ...]  # the prompt's blocks, from block 0
    hashes: tuple[str, ...]  # hashes of the prompt's full blocks


@dataclass(frozen=True)
class PersistBlock:
    req_id: str
    key: str
    block_id: int
    block_hash: str
    parent_hash: str | None  # the previous block's hash (the store's prefix trie), None at 0


@dataclass(frozen=True)
class Forget:
    req_id: str
    key: str
    peer: str


@dataclass(frozen=True)
class StepPlan:
    """Everything the worker side does in one step, in this order: forgets, prepares /
    receives (start), loads and saves (during the forward), persists (after it)."""

    forgets: tuple[Forget, ...] = ()
    prepares: tuple[PrepareLoad, ...] = ()
    receives: tuple[ReceivePrompt, ...] = ()
    loads: tuple[LayerLoad, ...] = ()
    saves: tuple[LayerSave, ...] = ()
    persists: tuple[PersistBlock, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.forgets or self.prepares or self.receives or self.loads
                    or self.saves or self.persists)
