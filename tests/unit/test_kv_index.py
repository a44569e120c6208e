"""Per-worker prefix indexes: predicted (TTL + LRU, fake clock) and event-driven."""

from __future__ import annotations

from harness.proxy.kv_index import EventIndex, PredictedIndex
from harness.sim.kv_cache import AllBlocksCleared, BlockRemoved, BlockStored


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def predicted(capacity: int = 100, ttl_s: float = 60.0) -> tuple[PredictedIndex, FakeClock]:
    clock = FakeClock()
    return PredictedIndex(capacity=capacity, ttl_s=ttl_s, clock=clock), clock


# --- PredictedIndex -------------------------------------------------------------------------------------------


def test_prefix_match_stops_at_first_miss() -> None:
    idx, _ = predicted()
    idx.insert([1, 2, 3, 5])
    assert idx.match([1, 2, 3, 5]) == 4
    assert idx.match([1, 2, 3, 5, 6]) == 4
    assert idx.match([1, 2, 4, 5]) == 2  # 5 is present but comes after the miss
    assert idx.match([9, 1, 2]) == 0
    assert idx.match([]) == 0
    assert len(idx) == 4


def test_ttl_expiry_with_fake_clock() -> None:
    idx, clock = predicted(ttl_s=10.0)
    idx.insert([1, 2])
    clock.now += 9.999
    assert idx.match([1, 2]) == 2
    clock.now += 0.002
    assert idx.match([1, 2]) == 0


def test_reinsert_refreshes_expiry() -> None:
    idx, clock = predicted(ttl_s=10.0)
    idx.insert([1, 2])
    clock.now += 6
    idx.insert([1])
    clock.now += 6  # 12 s after the first insert, 6 after the refresh of block 1
    assert idx.match([1, 2]) == 1
    assert idx.match([2]) == 0


def test_expired_head_hides_a_fresh_tail() -> None:
    idx, clock = predicted(ttl_s=10.0)
    idx.insert([1])
    clock.now += 5
    idx.insert([2])
    clock.now += 6
    assert idx.match([1, 2]) == 0
    assert idx.match([2]) == 1


def test_capacity_evicts_least_recently_inserted() -> None:
    idx, _ = predicted(capacity=3)
    for h in (1, 2, 3, 4):
        idx.insert([h])
    assert len(idx) == 3
    assert [idx.match([h]) for h in (1, 2, 3, 4)] == [0, 1, 1, 1]


def test_reinsert_refreshes_recency() -> None:
    idx, _ = predicted(capacity=3)
    for h in (1, 2, 3):
        idx.insert([h])
    idx.insert([1])  # 1 is now the most recent; 2 is the oldest
    idx.insert([4])
    assert [idx.match([h]) for h in (1, 2, 3, 4)] == [1, 0, 1, 1]
    assert len(idx) == 3


def test_capacity_evicts_a_prefix_tail_before_its_head() -> None:
    """A block is useless to prefix matching once any block before it is gone, so heads must outlive tails."""
    idx, _ = predicted(capacity=4)
    idx.insert([1, 2, 3])
    idx.insert([7, 8])  # one block must go: the tail of the older prefix, not its head
    assert idx.match([1, 2, 3]) == 2
    assert idx.match([7, 8]) == 2
    assert len(idx) == 4


def test_shared_prefix_survives_eviction() -> None:
    idx, _ = predicted(capacity=5)
    idx.insert([100, 101, 1])  # system prompt (100, 101) + request 1
    idx.insert([100, 101, 2])
    idx.insert([100, 101, 3])
    idx.insert([100, 101, 4])  # over capacity: the oldest tails go, never the shared head
    assert len(idx) == 5
    assert idx.match([100, 101]) == 2
    assert idx.match([100, 101, 4]) == 3
    assert idx.match([100, 101, 1]) == 2


def test_one_insert_larger_than_capacity_keeps_its_head() -> None:
    idx, _ = predicted(capacity=3)
    idx.insert([1, 2, 3, 4, 5])
    assert len(idx) == 3
    assert idx.match([1, 2, 3, 4, 5]) == 3


def test_insert_accepts_a_generator() -> None:
    idx, _ = predicted()
    idx.insert(h for h in (5, 6, 7))
    assert idx.match([5, 6, 7]) == 3


def test_clear() -> None:
    idx, _ = predicted()
    idx.insert([1, 2, 3])
    idx.clear()
    assert len(idx) == 0
    assert idx.match([1, 2, 3]) == 0
    idx.insert([1])
    assert idx.match([1, 2]) == 1


# --- EventIndex -------------------------------------------------------------------------------------------------


def stored(*hashes: int) -> BlockStored:
    return BlockStored(block_hashes=hashes, parent_block_hash=None, token_ids=tuple(range(16)), block_size=16)


def test_event_index_applies_stored_removed_cleared() -> None:
    idx = EventIndex()
    idx.apply([stored(1, 2, 3), stored(4)])
    assert idx.blocks == {1, 2, 3, 4}
    assert idx.match([1, 2, 3, 4, 5]) == 4
    idx.apply([BlockRemoved(block_hashes=(2,))])
    assert idx.blocks == {1, 3, 4}
    assert idx.match([1, 2, 3]) == 1
    assert idx.match([3, 4]) == 2
    idx.apply([BlockRemoved(block_hashes=(99,))])  # removing an unknown block is harmless
    assert idx.blocks == {1, 3, 4}
    idx.apply([AllBlocksCleared()])
    assert idx.blocks == set()
    assert idx.match([1]) == 0
    idx.apply([stored(7), BlockRemoved(block_hashes=(7,)), stored(8)])  # applied in order
    assert idx.blocks == {8}
    assert idx.events == 2 + 1 + 1 + 1 + 3


def test_event_index_counts_duplicate_stores() -> None:
    """vLLM 0.33 publishes a BlockStored for each physical block, duplicates of one hash included, and a BlockRemoved
    for each evicted block (vllm/v1/core/block_pool.py): the first removal must not drop a hash still held."""
    idx = EventIndex()
    idx.apply([stored(5), stored(5), stored(6)])
    idx.apply([BlockRemoved(block_hashes=(5,))])
    assert idx.match([5, 6]) == 2 and idx.blocks == {5, 6}
    idx.apply([BlockRemoved(block_hashes=(5,)), BlockRemoved(block_hashes=(5,))])  # an extra removal is harmless
    assert idx.match([5, 6]) == 0 and idx.blocks == {6}
    idx.apply([stored(5)])
    assert idx.match([5, 6]) == 2
