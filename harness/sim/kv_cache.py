"""A paged KV cache with vLLM's prefix-caching rules (``vllm/v1/core/block_pool.py``).

Blocks hold ``block_size`` tokens. A block becomes reusable only once it is full and hashed; lookups walk
the chain of block hashes from the start and stop at the first miss, capped so the last prompt token is
always recomputed. Freed blocks keep their hash and go to the tail of an LRU free queue, a request's blocks
tail-first, so the ends of chains are evicted before their heads; a cache hit takes a block back out of the
queue. The cached tokens a response reports are therefore computed from real state, never invented.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from harness.server.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent


class Block:
    __slots__ = ("block_hash", "block_id", "ref_cnt")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: int | None = None

    def __repr__(self) -> str:
        return f"Block({self.block_id}, ref={self.ref_cnt}, hash={self.block_hash})"


@dataclass
class CacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # prompt tokens served from the cache
    evictions: int = 0  # cached blocks reused for new content


class BlockPool:
    """Fixed pool of blocks, the hash -> block map and the LRU queue of free blocks."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        on_event: Callable[[KVEvent], None] | None = None,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Insertion order is eviction order: the first key is the least recently freed block.
        self.free: OrderedDict[int, Block] = OrderedDict((b.block_id, b) for b in self.blocks)
        self.cached: dict[int, Block] = {}
        self.stats = CacheStats()
        self._on_event = on_event

    # -- queries -------------------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by running requests (vLLM's ``kv_cache_usage_perc``)."""
        return 1.0 - len(self.free) / self.num_blocks

    def longest_cached_prefix(self, block_hashes: Sequence[int], max_blocks: int) -> list[Block]:
        hits: list[Block] = []
        for h in block_hashes[:max_blocks]:
            block = self.cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    # -- state changes ---------------------------------------------------------------------------------
    def touch(self, blocks: Iterable[Block]) -> None:
        """Take hit blocks into use: out of the free queue, one more reference."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self.free[block.block_id]
            block.ref_cnt += 1

    def allocate(self, n: int) -> list[Block] | None:
        """``n`` blocks from the head of the free queue, evicting their cached content; None if short."""
        if n > len(self.free):
            return None
        out = []
        removed: list[int] = []
        for _ in range(n):
            _, block = self.free.popitem(last=False)
            if block.block_hash is not None:
                if self.cached.get(block.block_hash) is block:
                    del self.cached[block.block_hash]
                    removed.append(block.block_hash)
                block.block_hash = None
            block.ref_cnt = 1
            out.append(block)
        if removed:
            self.stats.evictions += len(removed)
            self._emit(BlockRemoved(tuple(removed)))
        return out

    def cache_blocks(
        self,
        blocks: Sequence[Block],
        hashes: Sequence[int],
        token_ids: Sequence[int],
        parent: int | None,
        lora_name: str | None = None,
        extra_keys: Sequence[tuple[object, ...] | None] | None = None,
    ) -> None:
        """Publish full blocks under their hashes. A hash already cached by another block stays with it.

        ``token_ids`` holds the blocks' tokens (``block_size`` each) and ``parent`` the hash before the first
        block. One ``BlockStored`` goes out per run of newly stored blocks, with that run's own parent and
        tokens, so skipped duplicates never leave an event's hashes misaligned with its parent and tokens.
        """
        runs: list[tuple[int, int | None, list[int]]] = []  # (first index, parent hash, stored hashes)
        prev = parent
        extend = False
        for i, (block, h) in enumerate(zip(blocks, hashes, strict=True)):
            if block.block_hash is not None or h in self.cached:
                # Already published, or duplicate content computed concurrently: vLLM keeps the first block too.
                extend = False
            else:
                block.block_hash = h
                self.cached[h] = block
                if extend:
                    runs[-1][2].append(h)
                else:
                    runs.append((i, prev, [h]))
                    extend = True
            prev = h
        if self._on_event is None:
            return
        bs = self.block_size
        for start, run_parent, stored in runs:
            self._emit(
                BlockStored(
                    block_hashes=tuple(stored),
                    parent_block_hash=run_parent,
                    token_ids=tuple(token_ids[start * bs : (start + len(stored)) * bs]),
                    block_size=bs,
                    lora_name=lora_name,
                    extra_keys=tuple(extra_keys[start : start + len(stored)]) if extra_keys is not None else None,
                )
            )

    def free_blocks(self, ordered: Iterable[Block]) -> None:
        """Release blocks in the given order; pass a request's blocks reversed so tails evict first."""
        for block in ordered:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free[block.block_id] = block

    def reset(self) -> bool:
        """Drop every cached hash; refuses (False) while any block is in use, as vLLM does."""
        if len(self.free) != self.num_blocks:
            return False
        for block in self.cached.values():
            block.block_hash = None
        self.cached.clear()
        self._emit(AllBlocksCleared())
        return True

    def _emit(self, event: KVEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)
