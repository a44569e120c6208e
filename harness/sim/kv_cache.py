"""A paged KV cache with vLLM's prefix-caching rules (``vllm/v1/core/block_pool.py``).

Blocks hold ``block_size`` tokens. A block becomes reusable only once it is full and hashed; lookups walk
the chain of block hashes from the start and stop at the first miss, capped so the last prompt token is
always recomputed. Freed blocks keep their hash and go to the tail of an LRU free queue, a request's blocks
tail-first, so the ends of chains are evicted before their heads; a cache hit takes a block back out of the
queue. The cached tokens a response reports are therefore computed from real state, never invented.

Like vLLM the cache does not de-duplicate: two requests that compute the same block concurrently both cache it
under the same hash (a lookup takes the oldest), both appear in ``BlockStored`` events, and each eviction sends
its own ``BlockRemoved`` even while another block with that hash stays cached (``BlockHashToBlockMap`` and
``_maybe_evict_cached_block`` in ``vllm/v1/core/block_pool.py``). An event consumer must count, not keep a set.
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
        #: hash -> {block id: block}, oldest first: duplicates are cached too, as in vLLM.
        self.cached: dict[int, dict[int, Block]] = {}
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

    def cached_block(self, block_hash: int) -> Block | None:
        """The block a lookup of ``block_hash`` hits: the oldest one cached under it (vLLM's ``get_one_block``)."""
        blocks = self.cached.get(block_hash)
        return next(iter(blocks.values())) if blocks else None

    def longest_cached_prefix(self, block_hashes: Sequence[int], max_blocks: int) -> list[Block]:
        hits: list[Block] = []
        for h in block_hashes[:max_blocks]:
            block = self.cached_block(h)
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
        """``n`` blocks from the head of the free queue, evicting their cached content; None if short.

        Each evicted block sends its own ``BlockRemoved`` (``_maybe_evict_cached_block`` in
        ``vllm/v1/core/block_pool.py``)."""
        if n > len(self.free):
            return None
        out = []
        for _ in range(n):
            _, block = self.free.popitem(last=False)
            h = block.block_hash
            if h is not None:
                holders = self.cached.get(h)
                if holders is not None and holders.pop(block.block_id, None) is not None:
                    if not holders:
                        del self.cached[h]
                    self.stats.evictions += 1
                    self._emit(BlockRemoved((h,)))
                block.block_hash = None
            block.ref_cnt = 1
            out.append(block)
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
        """Publish newly full blocks under their hashes, as one ``BlockStored`` (``cache_full_blocks``).

        ``token_ids`` holds the blocks' tokens (``block_size`` each) and ``parent`` the hash before the first
        block. A hash another block already holds is cached a second time, not skipped: vLLM keeps block ids
        stable (block tables are append-only) and so never de-duplicates.
        """
        for block, h in zip(blocks, hashes, strict=True):
            if block.block_hash is not None:
                raise ValueError(f"block {block.block_id} is already cached")  # vLLM asserts the same
            block.block_hash = h
            self.cached.setdefault(h, {})[block.block_id] = block
        if self._on_event is None or not blocks:
            return
        self._emit(
            BlockStored(
                block_hashes=tuple(hashes),
                parent_block_hash=parent,
                token_ids=tuple(token_ids[: len(hashes) * self.block_size]),
                block_size=self.block_size,
                lora_name=lora_name,
                extra_keys=tuple(extra_keys) if extra_keys is not None else None,
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
        for holders in self.cached.values():
            for block in holders.values():
                block.block_hash = None
        self.cached.clear()
        self._emit(AllBlocksCleared())
        return True

    def _emit(self, event: KVEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)
