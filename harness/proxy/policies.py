"""Routing policies: pure functions of the candidates' state, so they are unit-testable without sockets.

``kv_mm`` and ``kv_text`` pick the worker with the lowest cost, where cost weighs the prompt tokens the worker
would have to prefill (its predicted cache overlap subtracted) against its load (prefill tokens in flight and
running requests). They differ only in the block hashes they are given: ``kv_mm`` hashes image content into the
blocks exactly as the workers do; ``kv_text`` drops images, so different images behind the same text look
identical — the degradation the harness's gates exist to catch.
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
    active_prefill_tokens: int = 0
    overlap_blocks: int = 0
    #: Blocks the worker is believed to cache in all; among equals, new content goes where there is least.
    cached_blocks: int = 0


@dataclass(frozen=True)
class CostWeights:
    overlap: float = 1.0  # per prompt token the worker would have to prefill
    prefill_load: float = 1.0  # per prefill token already in flight on the worker
    running: float = 16.0  # per running request on the worker, in token-equivalents


def kv_cost(c: Candidate, block_size: int, prompt_tokens: int, w: CostWeights) -> float:
    new_tokens = max(prompt_tokens - c.overlap_blocks * block_size, 0)
    return w.overlap * new_tokens + w.prefill_load * c.active_prefill_tokens + w.running * c.running


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
        return min(
            ordered,
            key=lambda c: (
                kv_cost(c, block_size, prompt_tokens, self.weights),
                c.running,
                c.cached_blocks,
            ),
        )
