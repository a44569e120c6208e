"""The hit-rate triad: theoretical, oracle, achieved — so a cache miss can be blamed on the right party.

* **theoretical**: the fraction of prompt tokens one infinite prefix cache would have served, given the workload's
  order. What is left (1 - theoretical) is the workload's own: new images, new texts.
* **oracle**: route each request to the worker holding its longest cached prefix, with every worker's cache
  bounded by its real capacity (LRU). ``theoretical - oracle`` is the cost of capacity and of sharding the cache
  over N workers; no router can beat the oracle by more than noise.
* **achieved**: what the run's responses reported (``usage.prompt_tokens_details.cached_tokens``, summed over
  requests — token-weighted, not a mean of per-request ratios), cross-checked with the workers' own
  ``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries`` counter deltas. ``oracle - achieved`` is the router's.

aiperf reports only a theoretical figure (its users ask for the achieved one, ai-dynamo/aiperf#732); the three
together are what lets a benchmark say whose fault a miss was.

Cache rules follow vLLM's prefix caching (``vllm/v1/core/kv_cache_utils.py``, ``block_pool.py``): only full blocks
are hashed, chained through their parent; the last prompt token is always recomputed, so a lookup matches at most
``(P - 1) // B`` blocks; a finished request's blocks go to the free queue tail first, so chain tails are evicted
before heads. Block hashes come from ``harness.mm.hashing``, the same function the simulated engine and the proxy
use.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from harness.mm.hashing import DEFAULT_BLOCK_SIZE


@dataclass(frozen=True)
class PromptKey:
    """What the cache sees of one request: its full-block hashes and its prompt length in tokens."""

    hashes: tuple[int, ...]
    num_tokens: int
    #: Counted in the statistics (False for warm-up requests, which still fill the caches).
    counted: bool = True


@dataclass(frozen=True)
class HitRate:
    hit_tokens: int
    prompt_tokens: int

    @property
    def rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class BlockCache:
    """One worker's prefix cache as a set of block hashes with LRU eviction (None capacity = unbounded)."""

    def __init__(self, capacity_blocks: int | None = None) -> None:
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, key: PromptKey, block_size: int) -> int:
        """Blocks of the longest cached prefix, capped as vLLM caps it (the last token is recomputed)."""
        limit = max(key.num_tokens - 1, 0) // block_size
        n = 0
        for h in key.hashes[:limit]:
            if h not in self._blocks:
                break
            n += 1
        return n

    def admit(self, key: PromptKey) -> None:
        """The request ran here: all its full blocks are now cached, heads most recently used (tail-first free)."""
        for h in reversed(key.hashes):
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        if self.capacity is not None:
            while len(self._blocks) > self.capacity:
                self._blocks.popitem(last=False)


def theoretical(keys: Sequence[PromptKey], block_size: int = DEFAULT_BLOCK_SIZE) -> HitRate:
    """One infinite cache, requests in order."""
    cache = BlockCache(None)
    hit = total = 0
    for key in keys:
        n = cache.match(key, block_size)
        cache.admit(key)
        if key.counted:
            hit += n * block_size
            total += key.num_tokens
    return HitRate(hit, total)


#: The share of the prompt the balanced placement charges the fullest cache (the proxy's ``cache_balance``).
BALANCE_SHARE = 0.1


def replay_placement(
    keys: Sequence[PromptKey], workers: int, capacity_blocks: int | None, block_size: int, balance: float
) -> HitRate:
    """Replay ``keys`` with each request sent where ``match - balance * prompt blocks * fill`` is largest (ties:
    the emptiest cache, then the lowest index); ``fill`` is a cache's size over the fullest one's."""
    caches = [BlockCache(capacity_blocks) for _ in range(workers)]
    hit = total = 0
    for key in keys:
        fullest = max(len(c) for c in caches) or 1
        prompt_blocks = key.num_tokens / block_size

        def score(i: int, key: PromptKey = key, fullest: int = fullest, prompt_blocks: float = prompt_blocks) -> tuple:
            m = caches[i].match(key, block_size)
            return (m - balance * prompt_blocks * len(caches[i]) / fullest, -len(caches[i]), -i)

        best = max(range(workers), key=score)
        n = caches[best].match(key, block_size)
        caches[best].admit(key)
        if key.counted:
            hit += n * block_size
            total += key.num_tokens
    return HitRate(hit, total)


def oracle(
    keys: Sequence[PromptKey],
    workers: int,
    capacity_blocks: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> HitRate:
    """The better of two clairvoyance-free placements over caches bounded by ``capacity_blocks``: each request to
    the worker with its longest cached prefix (ties: the emptiest cache, then the lowest index), and the same with
    new content steered to the emptier caches (``BALANCE_SHARE``). Longest-prefix alone piles every new image onto
    the first worker that cached a shared system prompt, and with bounded caches that worker then evicts what a
    router spreading new content keeps: an oracle below a real router's hit rate would blame the router wrongly.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    plain = replay_placement(keys, workers, capacity_blocks, block_size, 0.0)
    balanced = replay_placement(keys, workers, capacity_blocks, block_size, BALANCE_SHARE)
    return max(plain, balanced, key=lambda r: (r.rate, r.hit_tokens))


@dataclass(frozen=True)
class Triad:
    theoretical: float
    oracle: float
    #: From the clients' cached_tokens over prompt_tokens (successful, counted requests).
    achieved: float
    #: From the workers' /metrics counter deltas (every request of the run, warm-up included); None if unknown.
    achieved_metrics: float | None = None

    @property
    def of_oracle(self) -> float:
        """Achieved as a fraction of the oracle (1.0 = the router left nothing on the table)."""
        return self.achieved / self.oracle if self.oracle else 0.0

    def gaps(self) -> dict[str, float]:
        """Where the missing hit rate went: the workload (never cacheable), capacity and sharding, routing."""
        return {
            "workload": 1.0 - self.theoretical,
            "capacity": max(self.theoretical - self.oracle, 0.0),
            "routing": max(self.oracle - self.achieved, 0.0),
        }

    def to_json(self) -> dict[str, float | None]:
        return {
            "theoretical": self.theoretical,
            "oracle": self.oracle,
            "achieved": self.achieved,
            "achieved_metrics": self.achieved_metrics,
            "achieved_of_oracle": self.of_oracle,
            **{f"gap_{k}": v for k, v in self.gaps().items()},
        }


def achieved(cached_tokens: Sequence[int], prompt_tokens: Sequence[int]) -> float:
    """Token-weighted: sum of cached over sum of prompt tokens (a mean of ratios would let short prompts weigh as
    much as long ones)."""
    total = sum(prompt_tokens)
    return sum(cached_tokens) / total if total else 0.0
