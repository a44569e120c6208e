"""The hit-rate triad on hand-built block sequences with hand-computed expectations (block size 4)."""

from __future__ import annotations

import pytest

from harness.load.triad import (
    BALANCE_SHARE,
    BlockCache,
    PromptKey,
    Triad,
    achieved,
    oracle,
    replay_placement,
    theoretical,
)

B = 4


def key(*hashes: int, tokens: int | None = None, counted: bool = True) -> PromptKey:
    return PromptKey(tuple(hashes), tokens if tokens is not None else len(hashes) * B + 1, counted)


def test_lookup_is_capped_like_vllm_last_token_recomputed():
    c = BlockCache()
    c.admit(key(1, 2, 3, tokens=12))
    # 12 tokens: at most (12 - 1) // 4 = 2 blocks may hit, even though all 3 are cached
    assert c.match(key(1, 2, 3, tokens=12), B) == 2
    assert c.match(key(1, 2, 3, tokens=13), B) == 3
    assert c.match(key(1, 9, 3, tokens=13), B) == 1  # a prefix: stops at the first miss


def test_theoretical_single_infinite_cache():
    keys = [key(1, 2), key(1, 2), key(1, 3), key(4)]  # 9, 9, 9, 5 tokens
    t = theoretical(keys, B)
    # hits: 0, 2 blocks, 1 block, 0 -> 12 tokens of 32
    assert (t.hit_tokens, t.prompt_tokens) == (12, 32)
    assert t.rate == pytest.approx(12 / 32)


def test_uncounted_requests_fill_the_cache_but_are_not_counted():
    t = theoretical([key(1, 2, counted=False), key(1, 2)], B)
    assert (t.hit_tokens, t.prompt_tokens) == (8, 9)


def test_oracle_routes_to_the_longest_prefix_and_respects_capacity():
    a, b = key(1, 2), key(5, 6)
    # two workers, unbounded: a -> w0, b -> w1 (emptiest), repeats hit where they live
    assert oracle([a, b, a, b], 2, None, B).hit_tokens == 16
    # one worker holding 2 blocks: a, b evicts a, a misses (evicts b), b misses -> no hits at all
    assert oracle([a, b, a, b], 1, 2, B).hit_tokens == 0
    # and with room for both
    assert oracle([a, b, a, b], 1, 4, B).hit_tokens == 16


def test_lru_evicts_chain_tails_first():
    c = BlockCache(capacity_blocks=3)
    c.admit(key(1, 2, 3))
    c.admit(key(7))  # over capacity by one: the tail of the older chain goes, its head stays
    assert c.match(key(1, 2, 3, tokens=13), B) == 2


def test_triad_gaps_attribute_the_misses():
    t = Triad(theoretical=0.8, oracle=0.6, achieved=0.45, achieved_metrics=0.45)
    gaps = t.gaps()
    assert gaps["workload"] == pytest.approx(0.2)
    assert gaps["capacity"] == pytest.approx(0.2)
    assert gaps["routing"] == pytest.approx(0.15)
    assert t.of_oracle == pytest.approx(0.75)


def test_achieved_is_token_weighted_not_a_mean_of_ratios():
    # 90/100 and 0/900: the mean of ratios would say 45%, tokens say 9%
    assert achieved([90, 0], [100, 900]) == pytest.approx(0.09)
    assert achieved([], []) == 0.0


def test_oracle_spreads_new_content_past_a_shared_system_prompt():
    """Longest-prefix alone piles every new image onto the first worker that cached the system prompt (block 1,
    1/12 of each prompt), which then evicts them; the balanced placement spreads them and keeps them all."""
    images = [key(1, *range(100 * i, 100 * i + 11)) for i in range(1, 5)]  # 12 blocks, 49 tokens each
    keys = images + images
    piled = replay_placement(keys, 2, 30, B, 0.0)  # 30 blocks a worker: two images each fit, four on one do not
    spread = replay_placement(keys, 2, 30, B, BALANCE_SHARE)
    # by hand: img0 -> w0, img1 -> w1, img2 -> w0 and img3 -> w1 each hit the system block (4 tokens), and every
    # repeat hits its 12 blocks where it lives (48 tokens): 4 + 4 + 4 * 48
    assert spread.hit_tokens == 200 and spread.prompt_tokens == 8 * 49
    assert piled.hit_tokens < spread.hit_tokens
    assert oracle(keys, 2, 30, B) == spread
