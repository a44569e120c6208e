"""BlockPool: vLLM's prefix-caching rules (full blocks only, chained lookup, LRU eviction, events)."""

from __future__ import annotations

import pytest

from harness.mm.hashing import BlockKeyContext, block_hashes
from harness.sim.kv_cache import (
    AllBlocksCleared,
    Block,
    BlockPool,
    BlockRemoved,
    BlockStored,
    KVEvent,
)

BS = 4


def make_pool(num_blocks: int, block_size: int = BS) -> tuple[BlockPool, list[KVEvent]]:
    events: list[KVEvent] = []
    return BlockPool(num_blocks, block_size, on_event=events.append), events


def tokens(n: int, base: int = 1000) -> list[int]:
    return list(range(base, base + n))


NO_CTX = BlockKeyContext()


def cache_chain(pool: BlockPool, toks: list[int], ctx: BlockKeyContext = NO_CTX) -> tuple[list[Block], list[int]]:
    """Allocate blocks for ``toks``, publish its full blocks as one request would; returns (blocks, hashes)."""
    hashes = block_hashes(toks, pool.block_size, (), ctx)
    n_blocks = -(-len(toks) // pool.block_size)
    blocks = pool.allocate(n_blocks)
    assert blocks is not None
    full = len(hashes)
    pool.cache_blocks(blocks[:full], hashes, toks[: full * pool.block_size], None, ctx.lora_name)
    return blocks, hashes


def test_rejects_empty_pool() -> None:
    with pytest.raises(ValueError):
        BlockPool(0, BS)


def test_only_full_blocks_are_hashed_and_cached() -> None:
    pool, events = make_pool(8)
    toks = tokens(3 * BS + 2)  # three full blocks and a partial one
    blocks, hashes = cache_chain(pool, toks)
    assert len(blocks) == 4
    assert len(hashes) == 3
    assert len(pool.cached) == 3
    assert blocks[3].block_hash is None
    assert [b.block_hash for b in blocks[:3]] == hashes
    # A longer prompt sharing the partial block's tokens still hits only the three full blocks.
    longer = block_hashes(tokens(5 * BS), BS)
    assert longer[:3] == hashes
    assert pool.longest_cached_prefix(longer, 5) == blocks[:3]
    assert [type(e) for e in events] == [BlockStored]


def test_lookup_stops_at_first_miss() -> None:
    pool, _ = make_pool(8)
    hashes = block_hashes(tokens(3 * BS), BS)
    blocks = pool.allocate(3)
    assert blocks is not None
    # Cache blocks 0 and 2 but not 1: block 2 is unreachable because the walk stops at the first miss.
    pool.cache_blocks([blocks[0]], [hashes[0]], tokens(BS), None)
    pool.cache_blocks([blocks[2]], [hashes[2]], tokens(BS, 1000 + 2 * BS), hashes[1])
    assert pool.cached_block(hashes[2]) is blocks[2]
    assert pool.longest_cached_prefix(hashes, 3) == [blocks[0]]
    # An unrelated first block misses everything.
    other = block_hashes(tokens(3 * BS, base=5000), BS)
    assert pool.longest_cached_prefix(other, 3) == []


def test_lookup_respects_max_blocks() -> None:
    pool, _ = make_pool(8)
    blocks, hashes = cache_chain(pool, tokens(4 * BS))
    assert pool.longest_cached_prefix(hashes, 4) == blocks
    assert pool.longest_cached_prefix(hashes, 2) == blocks[:2]
    assert pool.longest_cached_prefix(hashes, 0) == []


def test_touch_takes_hits_out_of_free_queue() -> None:
    pool, _ = make_pool(6)
    blocks, hashes = cache_chain(pool, tokens(3 * BS))
    assert pool.num_free == 3
    pool.free_blocks(reversed(blocks))
    assert pool.num_free == 6
    assert all(b.ref_cnt == 0 for b in blocks)

    hits = pool.longest_cached_prefix(hashes, 3)
    assert hits == blocks
    pool.touch(hits)
    assert pool.num_free == 3
    assert all(b.ref_cnt == 1 for b in hits)
    assert all(b.block_id not in pool.free for b in hits)
    # A second request sharing the same blocks only adds references.
    pool.touch(hits)
    assert pool.num_free == 3
    assert all(b.ref_cnt == 2 for b in hits)
    # The touched blocks are never handed out by allocate while in use.
    fresh = pool.allocate(3)
    assert fresh is not None
    assert {b.block_id for b in fresh}.isdisjoint({b.block_id for b in hits})
    assert pool.allocate(1) is None
    assert all(h in pool.cached for h in hashes)
    # One release keeps them in use; the second returns them to the free queue with their hashes.
    pool.free_blocks(reversed(hits))
    assert pool.num_free == 0
    pool.free_blocks(reversed(hits))
    assert pool.num_free == 3
    assert pool.longest_cached_prefix(hashes, 3) == blocks


def test_allocate_evicts_lru_head_and_emits_block_removed() -> None:
    pool, events = make_pool(4)
    blocks = pool.allocate(4)
    assert blocks is not None
    assert pool.allocate(1) is None  # short: None, nothing taken
    hashes = block_hashes(tokens(4 * BS), BS)
    pool.cache_blocks(blocks, hashes, tokens(4 * BS), None)
    events.clear()
    # Free in chain order (not reversed): block 0 is the least recently freed, so it goes first.
    pool.free_blocks(blocks)
    assert list(pool.free) == [b.block_id for b in blocks]

    got = pool.allocate(1)
    assert got == [blocks[0]]
    assert blocks[0].block_hash is None
    assert blocks[0].ref_cnt == 1
    assert hashes[0] not in pool.cached
    assert events == [BlockRemoved((hashes[0],))]
    assert pool.stats.evictions == 1
    # The chain head is gone, so nothing of the chain is reachable any more.
    assert pool.longest_cached_prefix(hashes, 4) == []

    got2 = pool.allocate(2)
    assert got2 == [blocks[1], blocks[2]]
    # One BlockRemoved per evicted block, as _maybe_evict_cached_block sends them (vllm/v1/core/block_pool.py).
    assert events[-2:] == [BlockRemoved((hashes[1],)), BlockRemoved((hashes[2],))]
    assert pool.stats.evictions == 3


def test_allocate_of_never_cached_blocks_emits_nothing() -> None:
    pool, events = make_pool(4)
    got = pool.allocate(2)
    assert got is not None and len(got) == 2
    assert events == []
    assert pool.stats.evictions == 0


def test_reversed_free_evicts_chain_tail_first() -> None:
    pool, events = make_pool(3)
    blocks, hashes = cache_chain(pool, tokens(3 * BS))
    assert pool.num_free == 0
    pool.free_blocks(reversed(blocks))  # how the engine releases a finished request
    events.clear()

    evicted = pool.allocate(1)
    assert evicted == [blocks[2]]  # the LAST block of the chain
    assert events == [BlockRemoved((hashes[2],))]
    hits = pool.longest_cached_prefix(hashes, 3)
    assert hits == blocks[:2]  # the first two still hit
    assert [b.block_hash for b in hits] == hashes[:2]


def test_duplicate_block_is_cached_too_and_each_eviction_is_announced() -> None:
    """vLLM does not de-duplicate (``BlockHashToBlockMap`` in ``vllm/v1/core/block_pool.py``): the same content
    computed concurrently is cached under one hash twice, stored twice in events, looked up as the oldest block,
    and each eviction sends its own BlockRemoved even while the other copy still serves the hash."""
    pool, events = make_pool(4)
    toks = tokens(BS)
    (h,) = block_hashes(toks, BS)
    first, second = pool.allocate(2) or []
    pool.cache_blocks([first], [h], toks, None)
    pool.cache_blocks([second], [h], toks, None)  # the same content computed concurrently
    assert pool.cached_block(h) is first
    assert first.block_hash == h and second.block_hash == h
    assert events == [BlockStored((h,), None, tuple(toks), BS, None)] * 2

    # Evicting the duplicate announces its removal; the first block still serves the hash.
    pool.free_blocks([second])
    events.clear()
    assert pool.allocate(3) is not None  # takes the two never-used blocks and then `second`
    assert events == [BlockRemoved((h,))]
    assert pool.cached_block(h) is first
    assert pool.longest_cached_prefix([h], 1) == [first]
    pool.free_blocks([first])
    events.clear()
    assert pool.allocate(1) == [first]
    assert events == [BlockRemoved((h,))]
    assert pool.cached_block(h) is None and h not in pool.cached


def test_partially_duplicate_batch_is_one_event_over_all_new_blocks() -> None:
    """``cache_full_blocks`` sends one BlockStored over every newly full block of the request, duplicates
    included, so parent, hashes and token_ids stay aligned."""
    pool, events = make_pool(8)
    toks = tokens(3 * BS)
    hashes = block_hashes(toks, BS)
    a = pool.allocate(2)
    assert a is not None
    pool.cache_blocks(a, hashes[:2], toks[: 2 * BS], None)
    events.clear()
    b = pool.allocate(3)
    assert b is not None
    pool.cache_blocks(b, hashes, toks, None)
    assert pool.cached_block(hashes[0]) is a[0] and pool.cached_block(hashes[2]) is b[2]
    assert events == [BlockStored(tuple(hashes), None, tuple(toks), BS, None)]
    with pytest.raises(ValueError, match="already cached"):
        pool.cache_blocks(b[:1], hashes[:1], toks[:BS], None)


def test_reset_refuses_while_in_use_and_clears_when_free() -> None:
    pool, events = make_pool(4)
    blocks, hashes = cache_chain(pool, tokens(2 * BS))
    events.clear()
    assert pool.reset() is False
    assert events == []
    assert len(pool.cached) == 2
    # Still refuses while even one block is referenced.
    pool.free_blocks([blocks[1]])
    assert pool.reset() is False
    pool.free_blocks([blocks[0]])
    assert pool.num_free == 4

    assert pool.reset() is True
    assert events == [AllBlocksCleared()]
    assert pool.cached == {}
    assert all(b.block_hash is None for b in pool.blocks)
    assert pool.longest_cached_prefix(hashes, 2) == []
    # Reused blocks after a reset emit no BlockRemoved for the dropped hashes.
    events.clear()
    assert pool.allocate(4) is not None
    assert events == []


def test_usage_fraction() -> None:
    pool, _ = make_pool(8)
    assert pool.usage == 0.0
    got = pool.allocate(2)
    assert got is not None
    assert pool.usage == pytest.approx(0.25)
    more = pool.allocate(6)
    assert more is not None
    assert pool.usage == pytest.approx(1.0)
    pool.free_blocks(reversed(got + more))
    assert pool.usage == 0.0
    # Cached-but-free blocks do not count as used.
    cache_chain(pool, tokens(2 * BS))
    assert pool.usage == pytest.approx(0.25)


def test_block_stored_event_fields() -> None:
    pool, events = make_pool(8)
    ctx = BlockKeyContext(lora_name="adapter-a")
    toks = tokens(2 * BS + 1)
    _, hashes = cache_chain(pool, toks, ctx)
    assert events == [
        BlockStored(
            block_hashes=tuple(hashes),
            parent_block_hash=None,
            token_ids=tuple(toks[: 2 * BS]),
            block_size=BS,
            lora_name="adapter-a",
        )
    ]
    # A continuation names its parent: the hash of the block before it.
    longer = tokens(4 * BS)
    all_hashes = block_hashes(longer, BS, (), ctx)
    assert all_hashes[:2] == hashes
    extra = pool.allocate(2)
    assert extra is not None
    pool.cache_blocks(extra, all_hashes[2:4], longer[2 * BS : 4 * BS], all_hashes[1], "adapter-a")
    last = events[-1]
    assert isinstance(last, BlockStored)
    assert last.parent_block_hash == hashes[-1]
    assert last.block_hashes == tuple(all_hashes[2:4])
    assert last.token_ids == tuple(longer[2 * BS : 4 * BS])
    assert last.block_size == BS
    assert last.lora_name == "adapter-a"


def test_lora_changes_every_block_hash() -> None:
    toks = tokens(3 * BS)
    plain = block_hashes(toks, BS)
    lora = block_hashes(toks, BS, (), BlockKeyContext(lora_name="x"))
    assert all(a != b for a, b in zip(plain, lora, strict=True))
    pool, _ = make_pool(8)
    cache_chain(pool, toks)
    assert pool.longest_cached_prefix(lora, 3) == []
