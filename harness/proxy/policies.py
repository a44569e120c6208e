"""Routing policies: pure functions of the candidates' state, so they are unit-testable without sockets.

``kv_mm`` and ``kv_text`` pick the worker with the lowest cost, in prefill-token equivalents: the work the worker
would have to do for the request (prompt tokens past its predicted cache overlap, plus the vision encoder for
images it has not seen) against its load (prefill work in flight, running requests) and, for new content, how
much it already caches. This is Dynamo's KV router cost (``lib/llm/src/kv_router/scheduler.rs``: ``logit =
overlap_score_weight * potential_prefill_blocks + decode_blocks``) with two changes a multimodal workload needs:

- Image tokens cost more than text tokens: a prefix hit over an image saves its vision-encoder pass too, and a
  worker that never saw the image must run it (``image`` weight, per image token).
- Prefill work in flight counts at half (``prefill_load``): a batching engine runs the waiting prefills together
  in its next step (vLLM V1's scheduler, ``vllm/v1/core/sched/scheduler.py``), so a new request waits for the
  remainder of the step in progress, not behind each prefill in turn. At full weight a repeat of a cached image
  is sent away from the worker holding it whenever that worker is prefilling another image, which costs the
  hit, a second copy of the image in the fleet and the stalled decodes of the worker it is sent to.
- New content goes where the least is cached (``cache_balance``: the candidate caching the most is charged that
  fraction of the prompt's tokens, the others pro rata), so a short shared prefix (a system prompt) does not pile
  every new image onto the first worker that cached it; a hit over more than that fraction of the prompt still
  wins. llm-d's scheduler weighs a KV-cache-utilization scorer against its prefix-cache scorer for the same
  reason.

``kv_mm`` and ``kv_text`` differ only in the keys they are given: ``kv_mm`` hashes image content into the blocks
exactly as the workers do; ``kv_text`` drops images, so different images behind the same text look identical —
the degradation the harness's gates exist to catch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

POLICIES = ("round_robin", "random", "least_loaded", "kv_text", "kv_mm")
KV_POLICIES = frozenset({"kv_text", "kv_mm"})


@dataclass(frozen=True)
class Candidate:
    """What a policy may know about one worker at decision time."""

    index: int
    name: str
    running: int = 0
    #: Prefill work in flight on the worker (requests not answered yet), in token-equivalents (``prefill_work``).
    active_prefill_tokens: int = 0
    overlap_blocks: int = 0
    #: Blocks the worker is believed to cache in all; among equals, new content goes where there is least.
    cached_blocks: int = 0


#: One image in the prompt: its first placeholder's position and its number of placeholder tokens.
ImageSpan = tuple[int, int]


@dataclass(frozen=True)
class CostWeights:
    overlap: float = 1.0  # per token-equivalent of work the request would add to the worker
    prefill_load: float = 0.5  # per token-equivalent of prefill work already in flight on the worker
    running: float = 16.0  # per running request on the worker, in token-equivalents
    #: Extra per image token of an image the worker has not seen: the vision encoder, which the simulated
    #: engine's default timing prices at twice a text token's prefill (``harness.sim.timing``: 80 us vs 40 us).
    image: float = 2.0
    #: Fraction of the prompt's tokens charged to the candidate that caches the most blocks, pro rata to the others.
    cache_balance: float = 0.1


def prefill_work(
    overlap_blocks: int, block_size: int, prompt_tokens: int, images: Sequence[ImageSpan], image_weight: float
) -> float:
    """The work a request adds to a worker that holds ``overlap_blocks`` of its prefix, in prefill tokens.

    Every prompt token past the overlap is prefilled; an image whose first placeholder lies past the overlap is
    also encoded. One whose start is cached but whose end is not (the block holding its end also holds the text
    after it) was encoded there and is taken to be in the worker's encoder cache
    (``vllm/v1/core/encoder_cache_manager.py``).
    """
    cached = min(overlap_blocks * block_size, prompt_tokens)
    encoder = sum(length for offset, length in images if offset >= cached)
    return (prompt_tokens - cached) + image_weight * encoder


def kv_cost(
    c: Candidate,
    block_size: int,
    prompt_tokens: int,
    w: CostWeights,
    images: Sequence[ImageSpan] = (),
    max_cached_blocks: int = 0,
) -> float:
    """The candidate's cost; ``max_cached_blocks`` is the most any candidate caches (0: no balance term)."""
    work = prefill_work(c.overlap_blocks, block_size, prompt_tokens, images, w.image)
    share = c.cached_blocks / max_cached_blocks if max_cached_blocks > 0 else 0.0
    balance = w.cache_balance * prompt_tokens * share
    return w.overlap * work + w.prefill_load * c.active_prefill_tokens + w.running * c.running + balance


class Router:
    """Chooses among candidates; keeps the little state some policies need (a rotation counter, an RNG)."""

    def __init__(self, policy: str, weights: CostWeights | None = None, seed: int | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
        self.policy = policy
        self.weights = weights or CostWeights()
        self._rr = 0
        self._rng = random.Random(seed)

    @property
    def uses_kv(self) -> bool:
        return self.policy in KV_POLICIES

    def _rotate(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """Candidates starting after the last pick, so ties spread instead of piling on the first worker."""
        start = self._rr % len(candidates)
        self._rr += 1
        return list(candidates[start:]) + list(candidates[:start])

    def choose(
        self,
        candidates: Sequence[Candidate],
        *,
        total_blocks: int = 0,
        block_size: int = 16,
        prompt_tokens: int = 0,
        images: Sequence[ImageSpan] = (),
    ) -> Candidate:
        if not candidates:
            raise ValueError("no candidates")
        if self.policy == "round_robin":
            return self._rotate(candidates)[0]
        if self.policy == "random":
            return self._rng.choice(list(candidates))
        ordered = self._rotate(candidates)
        if self.policy == "least_loaded":
            return min(ordered, key=lambda c: (c.running, c.active_prefill_tokens))
        most = max(c.cached_blocks for c in candidates)
        return min(
            ordered,
            key=lambda c: (
                kv_cost(c, block_size, prompt_tokens, self.weights, images, most),
                c.running,
                c.cached_blocks,
            ),
        )
