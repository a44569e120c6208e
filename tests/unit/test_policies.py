"""Routing policies: the Router's choice for each policy, the kv cost and how ties spread."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from harness.proxy.policies import KV_POLICIES, POLICIES, Candidate, CostWeights, Router, kv_cost, prefill_work

BLOCK = 16


def workers(n: int, **fields: int) -> list[Candidate]:
    return [Candidate(index=i, name=f"w{i}", **fields) for i in range(n)]


def picks(router: Router, candidates: list[Candidate], n: int, **kw: int) -> list[int]:
    return [router.choose(candidates, **kw).index for _ in range(n)]


# --- construction ---------------------------------------------------------------------------------------------


def test_unknown_policy_names_every_choice() -> None:
    with pytest.raises(ValueError, match="unknown policy 'kv_magic'") as err:
        Router("kv_magic")
    for name in POLICIES:
        assert name in str(err.value)


@pytest.mark.parametrize("policy", POLICIES)
def test_no_candidates_is_an_error(policy: str) -> None:
    with pytest.raises(ValueError, match="no candidates"):
        Router(policy).choose([])


@pytest.mark.parametrize("policy", POLICIES)
def test_uses_kv_only_for_kv_policies(policy: str) -> None:
    assert Router(policy).uses_kv is (policy in KV_POLICIES)
    assert Router(policy).weights == CostWeights()


# --- round_robin / random / least_loaded ------------------------------------------------------------------------


def test_round_robin_cycles_in_order_ignoring_load_and_overlap() -> None:
    cands = [
        Candidate(0, "a", running=9, overlap_blocks=0),
        Candidate(1, "b", running=0, overlap_blocks=50),
        Candidate(2, "c", running=3),
    ]
    assert picks(Router("round_robin"), cands, 7, prompt_tokens=800) == [0, 1, 2, 0, 1, 2, 0]


def test_round_robin_single_candidate() -> None:
    assert picks(Router("round_robin"), workers(1), 3) == [0, 0, 0]


def test_random_is_reproducible_with_a_seed_and_covers_every_worker() -> None:
    cands = workers(4)
    a = picks(Router("random", seed=1234), cands, 200)
    b = picks(Router("random", seed=1234), cands, 200)
    assert a == b
    assert set(a) == {0, 1, 2, 3}
    # Not round robin in disguise: some worker is picked twice in a row somewhere in 200 picks.
    assert any(x == y for x, y in itertools.pairwise(a))


def test_least_loaded_prefers_fewest_running() -> None:
    cands = [
        Candidate(0, "a", running=3, active_prefill_tokens=0),
        Candidate(1, "b", running=1, active_prefill_tokens=5000),
        Candidate(2, "c", running=2, active_prefill_tokens=0, overlap_blocks=100),
    ]
    assert picks(Router("least_loaded"), cands, 4, prompt_tokens=1600) == [1, 1, 1, 1]


def test_least_loaded_breaks_running_ties_by_prefill_tokens() -> None:
    cands = [
        Candidate(0, "a", running=2, active_prefill_tokens=300),
        Candidate(1, "b", running=2, active_prefill_tokens=100),
        Candidate(2, "c", running=2, active_prefill_tokens=200),
    ]
    assert picks(Router("least_loaded"), cands, 4) == [1, 1, 1, 1]


def test_least_loaded_spreads_exact_ties() -> None:
    assert picks(Router("least_loaded"), workers(3, running=1), 3) == [0, 1, 2]


# --- kv policies ------------------------------------------------------------------------------------------------


def test_kv_cost_arithmetic() -> None:
    w = CostWeights(overlap=2.0, prefill_load=0.5, running=10.0)
    c = Candidate(0, "a", running=3, active_prefill_tokens=40, overlap_blocks=2)
    # new tokens = 100 - 2*16 = 68 -> 2*68 + 0.5*40 + 10*3
    assert kv_cost(c, block_size=BLOCK, prompt_tokens=100, w=w) == 136.0 + 20.0 + 30.0
    # Overlap beyond the prompt never makes the prefill term negative.
    big = Candidate(0, "a", overlap_blocks=50)
    assert kv_cost(big, block_size=BLOCK, prompt_tokens=100, w=w) == 0.0
    # Default weights: one token-equivalent per token, half per token in flight, 16 per running request.
    d = Candidate(0, "a", running=1, active_prefill_tokens=8, overlap_blocks=1)
    assert kv_cost(d, BLOCK, 50, CostWeights()) == (50 - 16) + 4 + 16


@pytest.mark.parametrize("policy", sorted(KV_POLICIES))
def test_kv_picks_max_overlap_when_loads_are_equal(policy: str) -> None:
    cands = [
        Candidate(i, f"w{i}", running=1, active_prefill_tokens=32, overlap_blocks=o) for i, o in enumerate([1, 5, 3, 0])
    ]
    router = Router(policy)
    assert picks(router, cands, 5, total_blocks=8, block_size=BLOCK, prompt_tokens=8 * BLOCK) == [1] * 5


@pytest.mark.parametrize("policy", sorted(KV_POLICIES))
def test_kv_prefers_overlap_only_up_to_the_prefill_load_crossover(policy: str) -> None:
    w = CostWeights(overlap=1.0, prefill_load=0.5, running=10.0)
    prompt = 20 * BLOCK
    cold = Candidate(1, "cold")

    def warm(active: int) -> Candidate:
        return Candidate(0, "warm", overlap_blocks=4, active_prefill_tokens=active)

    # Crossover: the overlap saves overlap * 4 * BLOCK tokens of prefill; in-flight tokens cost prefill_load each.
    crossover = w.overlap * 4 * BLOCK / w.prefill_load
    assert crossover == 128
    assert kv_cost(warm(int(crossover)), BLOCK, prompt, w) == kv_cost(cold, BLOCK, prompt, w)
    assert kv_cost(warm(127), BLOCK, prompt, w) < kv_cost(cold, BLOCK, prompt, w)

    kw = {"total_blocks": 20, "block_size": BLOCK, "prompt_tokens": prompt}
    for order in ([0, 1], [1, 0]):  # the candidates' order must not matter away from the tie
        below = [[warm(127), cold][i] for i in order]
        above = [[warm(129), cold][i] for i in order]
        assert Router(policy, w).choose(below, **kw).name == "warm"
        assert Router(policy, w).choose(above, **kw).name == "cold"


@pytest.mark.parametrize("policy", sorted(KV_POLICIES))
def test_kv_running_requests_outweigh_overlap_past_the_crossover(policy: str) -> None:
    w = CostWeights(overlap=1.0, prefill_load=1.0, running=10.0)
    prompt = 10 * BLOCK
    # 4 overlapping blocks save 64 tokens; each running request costs 10 -> crossover at 6.4 running requests.
    crossover = w.overlap * 4 * BLOCK / w.running
    assert 6 < crossover < 7
    kw = {"total_blocks": 10, "block_size": BLOCK, "prompt_tokens": prompt}
    cold = Candidate(1, "cold")
    assert Router(policy, w).choose([Candidate(0, "warm", running=6, overlap_blocks=4), cold], **kw).name == "warm"
    assert Router(policy, w).choose([Candidate(0, "warm", running=7, overlap_blocks=4), cold], **kw).name == "cold"


def test_kv_equal_cost_prefers_fewer_running() -> None:
    # One running request (16) costs as much as 32 tokens in flight (at half weight): equal cost, fewer running wins.
    cands = [Candidate(0, "busy", running=1), Candidate(1, "prefilling", active_prefill_tokens=32)]
    kw = {"total_blocks": 4, "block_size": BLOCK, "prompt_tokens": 4 * BLOCK}
    assert kv_cost(cands[0], BLOCK, 64, CostWeights()) == kv_cost(cands[1], BLOCK, 64, CostWeights())
    assert picks(Router("kv_mm"), cands, 4, **kw) == [1, 1, 1, 1]


@pytest.mark.parametrize("policy", sorted(KV_POLICIES))
def test_kv_ties_spread_across_workers(policy: str) -> None:
    router = Router(policy)
    got = picks(router, workers(3), 6, total_blocks=4, block_size=BLOCK, prompt_tokens=4 * BLOCK)
    assert got == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("policy", sorted(KV_POLICIES))
def test_kv_ties_prefer_fewer_cached_blocks(policy: str) -> None:
    cands = [Candidate(i, f"w{i}", cached_blocks=c) for i, c in enumerate([50, 3, 20])]
    router = Router(policy)
    assert picks(router, cands, 5, total_blocks=4, block_size=BLOCK, prompt_tokens=4 * BLOCK) == [1] * 5


# --- the multimodal cost: the encoder, batched prefills, spreading new content ----------------------------------

# The bench's image-reuse prompt (Qwen3-VL, 1024x768): a 40-token system prefix, 768 image placeholders, 43 tokens
# of per-request text after them; the image's last block also holds new text, so a repeat overlaps 50 blocks.
PROMPT = 851
IMAGE = ((40, 768),)
HIT = 50  # blocks a worker holding the image (and the system prompt) has
SYSTEM = 2  # blocks of the shared system prompt alone


def test_prefill_work_prices_the_encoder_only_for_images_the_worker_has_not_seen() -> None:
    assert prefill_work(0, BLOCK, PROMPT, IMAGE, 2.0) == PROMPT + 2 * 768
    assert prefill_work(SYSTEM, BLOCK, PROMPT, IMAGE, 2.0) == PROMPT - 32 + 2 * 768  # the image starts at 40 > 32
    # The image's start is cached: it was encoded there (its tail is prefilled again, the encoder is not run).
    assert prefill_work(3, BLOCK, PROMPT, IMAGE, 2.0) == PROMPT - 48
    assert prefill_work(HIT, BLOCK, PROMPT, IMAGE, 2.0) == PROMPT - HIT * BLOCK
    assert prefill_work(HIT, BLOCK, PROMPT, IMAGE, 0.0) == prefill_work(HIT, BLOCK, PROMPT, (), 5.0)
    # Two images, the first cached: only the second is encoded; an overlap beyond the prompt is the prompt.
    assert prefill_work(10, BLOCK, 400, ((20, 100), (200, 100)), 3.0) == (400 - 160) + 3 * 100
    assert prefill_work(99, BLOCK, 400, ((20, 100), (200, 100)), 3.0) == 0


def _choose(cands: list[Candidate], weights: CostWeights | None = None) -> str:
    return Router("kv_mm", weights).choose(cands, block_size=BLOCK, prompt_tokens=PROMPT, images=IMAGE).name


def test_repeat_stays_on_the_holder_while_it_prefills_another_image() -> None:
    """The holder is prefilling one new image (its whole work in flight) with two requests running; an idle
    worker has nothing. Batched, the repeat waits for the rest of that step: it stays. At the old full weight of
    in-flight work it was sent away, re-encoding and re-prefilling the image elsewhere."""
    miss = round(prefill_work(SYSTEM, BLOCK, PROMPT, IMAGE, 2.0))
    holder = Candidate(0, "holder", running=2, active_prefill_tokens=miss, overlap_blocks=HIT, cached_blocks=600)
    idle = Candidate(1, "idle", overlap_blocks=SYSTEM, cached_blocks=600)
    for order in ([holder, idle], [idle, holder]):
        assert _choose(order) == "holder"
    # The old weights (in-flight tokens at full weight, images priced as text, no balance term) sent it away.
    old = CostWeights(prefill_load=1.0, image=0.0, cache_balance=0.0)
    raw = round(prefill_work(SYSTEM, BLOCK, PROMPT, IMAGE, 0.0))
    assert _choose([dataclasses.replace(holder, active_prefill_tokens=raw), idle], old) == "idle"


def test_repeat_leaves_a_holder_with_a_deep_queue() -> None:
    """Three new images queued on the holder outweigh one image's prefill elsewhere: load still counts."""
    miss = round(prefill_work(SYSTEM, BLOCK, PROMPT, IMAGE, 2.0))
    holder = Candidate(0, "holder", running=3, active_prefill_tokens=3 * miss, overlap_blocks=HIT)
    idle = Candidate(1, "idle", overlap_blocks=SYSTEM)
    assert _choose([holder, idle]) == "idle"


def test_new_image_goes_to_the_worker_not_prefilling() -> None:
    miss = round(prefill_work(SYSTEM, BLOCK, PROMPT, IMAGE, 2.0))
    busy = Candidate(0, "busy", running=1, active_prefill_tokens=miss, overlap_blocks=SYSTEM)
    free = Candidate(1, "free", running=1, overlap_blocks=SYSTEM)
    assert _choose([busy, free]) == "free"
    assert _choose([free, busy]) == "free"


def test_new_images_do_not_pile_onto_the_system_prompt_holder() -> None:
    """Idle fleet (concurrency 1): only w0 caches the system prompt, plus some images. A new image saves 32
    tokens there, less than the balance term, so it goes to the worker caching least; a repeat (50 blocks)
    still goes to its holder however full it is."""
    full = Candidate(0, "full", overlap_blocks=SYSTEM, cached_blocks=900)
    empty = Candidate(1, "empty", overlap_blocks=0, cached_blocks=0)
    half = Candidate(2, "half", overlap_blocks=0, cached_blocks=450)
    assert _choose([full, empty, half]) == "empty"
    assert _choose([full, empty, half], CostWeights(cache_balance=0.0)) == "full"  # without the term: piles
    holder = Candidate(0, "full", overlap_blocks=HIT, cached_blocks=900)
    assert _choose([holder, empty, half]) == "full"


def test_kv_cost_balance_term_is_pro_rata_to_the_fullest_candidate() -> None:
    w = CostWeights(cache_balance=0.1)
    c = Candidate(0, "a", cached_blocks=50)
    assert kv_cost(c, BLOCK, 200, w, max_cached_blocks=100) == 200 + 0.1 * 200 * 0.5
    assert kv_cost(c, BLOCK, 200, w, max_cached_blocks=0) == 200  # nothing cached anywhere: no term
    assert kv_cost(c, BLOCK, 200, w, (), 50) - kv_cost(c, BLOCK, 200, w, (), 0) == pytest.approx(20.0)
