"""The makespan lower bound is a true bound for ANY schedule under the packing rules, and the planner's choice.

Validity is shown three ways: each argument on a small inventory computed by hand; the dual feasible functions
checked on random sets of sizes that fit one card; and bound <= optimum <= scheduler on inventories small
enough to find the optimum by exhaustive search (``brute_force_optimum``, written from the rules, not from
the scheduler's code)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.gpu.bounds import (
    _f_eps,
    _u_k,
    conflict_cliques,
    lower_bound,
    naive_lower_bound_s,
    parallel_machines_bound,
)
from harness.gpu.demand import load_inventory
from harness.gpu.scheduler import (
    Demand,
    GpuState,
    Policy,
    Rule,
    Running,
    Schedule,
    candidate_rules,
    plan,
    plan_step,
    simulate,
)

GIB = 1024**3
NO_STAGGER = Policy(stagger_s=0.0)
DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data"


def case(name: str, gib: float | None, dur: float, gpus: int = 1) -> Demand:
    return Demand(name, dur, gpus=gpus, vram_gib=gib, kv_cache_bytes=None if gib is None else 2 * GIB)


# -- the rules, written out independently of the scheduler ------------------------------------------------------


def card_set_ok(vrams: Sequence[float | None], cap: float, margin: float) -> bool:
    """May these cases run together on one card? One alone: up to the card; several: known VRAM, summing to
    at most (1 - margin) of the card."""
    if len(vrams) <= 1:
        return all(v is None or v <= cap + 1e-9 for v in vrams)
    if any(v is None for v in vrams):
        return False
    return sum(v for v in vrams if v is not None) <= (1 - margin) * cap + 1e-9


def check_rules(s: Schedule, demands: Sequence[Demand], policy: Policy) -> None:
    """Every instant of ``s`` obeys the rules: card sets, gangs on distinct cards for their whole duration,
    every case run once, and the stagger (no start on a card within ``stagger_s`` of the last start there while
    that case still runs)."""
    by_id = {d.case_id: d for d in demands}
    assert sorted(i.case_id for i in s.items) == sorted(by_id)
    for i in s.items:
        d = by_id[i.case_id]
        assert len(set(i.gpus)) == len(i.gpus) == d.gpus
        assert i.end_s - i.start_s == pytest.approx(d.duration_s)
    for g, cap in enumerate(s.capacities_gib):
        on = [i for i in s.items if g in i.gpus]
        for t in sorted({i.start_s for i in on}):
            running = [i for i in on if i.start_s <= t < i.end_s]
            assert card_set_ok([by_id[i.case_id].vram_gib for i in running], cap, policy.share_margin), (g, t)
        starts = sorted(on, key=lambda i: i.start_s)
        for a, b in itertools.pairwise(starts):
            if b.start_s < a.end_s:
                assert b.start_s - a.start_s >= policy.stagger_s - 1e-9


def brute_force_optimum(demands: Sequence[Demand], caps: Sequence[float], margin: float) -> float:
    """The optimal makespan under the rules (stagger and CPU budget ignored: a relaxation, so this optimum is
    <= any schedule the scheduler may build), by exhaustive search over integer start times and card sets.
    Integer starts lose nothing when durations are integers: flooring every start of an optimal schedule makes
    two cases overlap only if they overlapped before, so every set running together ran together before.
    """
    jobs = sorted((d for d in demands if d.gpus > 0), key=lambda d: -d.duration_s)
    fill = max((d.duration_s for d in demands if d.gpus == 0), default=0.0)
    assert all(float(d.duration_s).is_integer() for d in jobs)
    n = len(caps)
    best = [sum(d.duration_s for d in jobs) + 1.0]  # above the sequential schedule, which is always feasible
    placed: list[tuple[int, int, tuple[int, ...], float | None]] = []  # (start, end, cards, vram)

    def ok(start: int, end: int, cards: tuple[int, ...], vram: float | None) -> bool:
        for g in cards:
            for t in range(start, end):
                here = [v for s, e, cs, v in placed if g in cs and s <= t < e]
                if not card_set_ok([*here, vram], caps[g], margin):
                    return False
        return True

    def dfs(i: int, makespan: int) -> None:
        if makespan >= best[0]:
            return
        if i == len(jobs):
            best[0] = makespan
            return
        d = jobs[i]
        dur = int(d.duration_s)
        for start in range(0, int(best[0]) - dur):
            for cards in itertools.combinations(range(n), d.gpus):
                if ok(start, start + dur, cards, d.vram_gib):
                    placed.append((start, start + dur, cards, d.vram_gib))
                    dfs(i + 1, max(makespan, start + dur))
                    placed.pop()

    dfs(0, 0)
    return max(best[0], fill)


# -- each argument on a hand-computed inventory -----------------------------------------------------------------


def test_margin_aware_area_four_cases_fill_exactly_the_shared_85_percent() -> None:
    # 4 x 17 GiB = 68 GiB = 85% of one 80 GiB card: four run together; eight cases of 10 s take 20 s.
    # The plain bound spreads their memory over the whole card: 8 x 17 x 10 / 80 = 17 s.
    demands = [case(f"c{i}", 17.0, 10) for i in range(8)]
    assert naive_lower_bound_s(demands, [80.0]) == pytest.approx(17.0)
    b = lower_bound(demands, [80.0], 0.15)
    assert b.s == pytest.approx(20.0)
    assert b.parts["area"] == pytest.approx(20.0)  # 8 x (17 / 68) x 10 s on one card
    assert brute_force_optimum(demands, [80.0], 0.15) == 20.0
    assert simulate(demands, [80.0], NO_STAGGER).makespan_s == 20.0


def test_a_case_that_only_runs_alone_counts_its_whole_card() -> None:
    # 70 GiB is more than the 68 GiB a shared card may hold: nothing runs beside it.
    demands = [case("big", 70.0, 10), case("small", 10.0, 10)]
    b = lower_bound(demands, [80.0], 0.15)
    assert b.parts["area"] == pytest.approx(10 + 10 * 10 / 68)  # whole card for the big one
    assert b.s == 20.0 and b.binding.startswith("conflicts")  # they never share: one after the other
    assert naive_lower_bound_s(demands, [80.0]) == 10.0
    assert brute_force_optimum(demands, [80.0], 0.15) == 20.0
    # Without the margin they fit together (80 GiB): the same bound drops to the longest case.
    assert lower_bound(demands, [80.0], 0.0).s == 10.0


def test_u_k_at_most_two_of_three_25_gib_cases_share_a_card() -> None:
    # 3 x 25 = 75 > 68: at most two together; no two conflict, so the clique argument says nothing.
    demands = [case(f"c{i}", 25.0, 10) for i in range(3)]
    b = lower_bound(demands, [80.0], 0.15)
    assert b.parts["area"] == pytest.approx(3 * 25 / 68 * 10)  # 11.0 s
    assert b.parts["area u_2"] == pytest.approx(15.0)  # each in (1/3, 2/3] of 68 GiB weighs 1/2
    assert b.s == pytest.approx(15.0) and not any(k.startswith("conflicts") for k in b.parts)
    opt = brute_force_optimum(demands, [80.0], 0.15)
    assert opt == 20.0 and b.s <= opt


def test_conflicting_cases_and_a_gang_run_as_on_parallel_machines() -> None:
    # Every pair sums to 80 > 68 GiB: the gang's two GPUs and a and b are four jobs on three cards.
    demands = [case("g", 40.0, 10, gpus=2), case("a", 40.0, 10), case("b", 40.0, 10)]
    assert [sorted(d.case_id for d in c) for c in conflict_cliques(demands, 68.0)] == [["a", "b", "g"]]
    b = lower_bound(demands, [80.0] * 3, 0.15)
    assert b.s == 20.0 and b.binding.startswith("conflicts")
    assert naive_lower_bound_s(demands, [80.0] * 3) == 10.0
    s = simulate(demands, [80.0] * 3, NO_STAGGER)
    assert s.makespan_s == 20.0 and s.lower_bound_s == 20.0


def test_a_filler_counts_only_for_the_longest_case() -> None:
    demands = [case("gpu", 10.0, 10), Demand("filler", 50.0, gpus=0, vram_gib=0.0)]
    b = lower_bound(demands, [80.0], 0.15)
    assert b.s == 50.0 and b.binding == "longest"
    assert lower_bound([], [80.0], 0.15).s == 0.0


def test_parallel_machines_bound_is_exact_where_counting_is_not() -> None:
    # 7, 5, 4, 4 on two machines: the optimum is 11 ({7, 4}, {5, 4}); mean load 10, p2 + p3 = 9.
    jobs = [(7.0, "a"), (5.0, "b"), (4.0, "c"), (4.0, "d")]
    assert parallel_machines_bound(jobs, 2) == 11.0
    # Past the node limit it falls back to the counting bounds: weaker, still a bound.
    assert parallel_machines_bound(jobs, 2, node_limit=0) == 10.0
    # A gang's GPUs go to distinct machines: g, g, 2 on two machines is 5 + ... = 7, not 2 + 2 + ... = 5 + 2.
    assert parallel_machines_bound([(5.0, "g"), (5.0, "g"), (2.0, "x")], 2) == 7.0
    assert parallel_machines_bound([(3.0, "a")], 4) == 3.0


# -- validity, generally ---------------------------------------------------------------------------------------


def test_dual_feasible_functions_never_weigh_a_card_above_one() -> None:
    """``sum x <= 1 => sum f(x) <= 1`` for every function the area argument uses, on random sets that fit a
    shared card (including sizes right on the functions' steps)."""
    rng = random.Random(7)
    funcs = [_u_k(k) for k in range(1, 11)] + [_f_eps(e) for e in (0.05, 0.1, 1 / 3, 0.25, 0.5)]
    steps = [j / (k + 1) for k in range(1, 11) for j in range(1, k + 2)]
    for _ in range(3000):
        xs: list[float] = []
        while True:
            x = rng.choice(steps) if rng.random() < 0.3 else rng.random() * (1 - sum(xs))
            if sum(xs) + x > 1:
                break
            xs.append(x)
        for f in funcs:
            assert sum(f(x) for x in xs) <= 1 + 1e-9, (xs, f)


def random_inventory(rng: random.Random, n_cards: int) -> list[Demand]:
    sizes = [None, 5.0, 10.0, 20.0, 25.0, 30.0, 35.0, 40.0, 50.0, 60.0, 70.0, 80.0]
    demands = []
    for i in range(rng.randint(3, 5)):
        gpus = 2 if n_cards > 1 and rng.random() < 0.15 else 1
        demands.append(case(f"c{i}", rng.choice(sizes), rng.randint(1, 4), gpus=gpus))
    return demands


def test_bound_le_optimum_le_scheduler_on_exhaustively_solved_inventories() -> None:
    rng = random.Random(11)
    tighter = 0
    for trial in range(40):
        n_cards = 1 + trial % 2
        caps = [80.0] * n_cards
        demands = random_inventory(rng, n_cards)
        opt = brute_force_optimum(demands, caps, 0.15)
        bound = lower_bound(demands, caps, 0.15).s
        naive = naive_lower_bound_s(demands, caps)
        assert naive <= bound + 1e-9
        assert bound <= opt + 1e-9, (demands, bound, opt)
        for sched in (simulate(demands, caps, NO_STAGGER), plan(demands, caps, NO_STAGGER, evaluations=20)):
            check_rules(sched, demands, NO_STAGGER)
            assert opt <= sched.makespan_s + 1e-9
        tighter += bound > naive + 1e-9
    assert tighter >= 10  # the honest bound is tighter than the plain one on a good share of them


@pytest.mark.parametrize("name", ["inventory_40.json", "inventory_40_dense.json"])
def test_the_recorded_inventories_bound_and_plan(name: str) -> None:
    demands = load_inventory(DATA / name)
    caps = [80.0] * 8
    s = plan(demands, caps, Policy(), evaluations=12)
    check_rules(s, demands, Policy())
    assert s.naive_lower_bound_s <= s.lower_bound_s <= s.makespan_s
    assert s.makespan_s <= simulate(demands, caps, Policy()).makespan_s  # never worse than the default rule


# -- the planner's rules ---------------------------------------------------------------------------------------


def test_a_rank_orders_the_pending_cases_and_unknown_ids_go_last() -> None:
    pending = [case("long", 10.0, 100), case("mid", 10.0, 50), case("short", 10.0, 10), case("new", 10.0, 70)]
    rule = Rule("test", {"short": 0, "mid": 1, "long": 2})
    assert [d.case_id for d in rule.ordered(pending)] == ["short", "mid", "long", "new"]
    step = plan_step(pending, [GpuState(0, 80.0)], 0.0, NO_STAGGER, rule=rule)
    assert [p.case_id for p in step.starts] == ["short", "mid", "long", "new"]


def test_best_fit_puts_a_case_on_the_fullest_card_that_takes_it() -> None:
    gpus = [
        GpuState(0, 80.0, (Running("x", 10.0, 0.0, 100.0),)),
        GpuState(1, 80.0, (Running("y", 40.0, 0.0, 100.0),)),
        GpuState(2, 80.0),
    ]
    spread = plan_step([case("a", 20.0, 10)], gpus, 0.0, NO_STAGGER)
    assert spread.starts[0].gpus == (2,)  # the empty card
    best = plan_step([case("a", 20.0, 10)], gpus, 0.0, NO_STAGGER, rule=Rule("bf", fit="best_fit"))
    assert best.starts[0].gpus == (1,)  # 40 + 20 <= 68: the fullest card that fits


def test_the_planner_beats_longest_first_where_spreading_strands_a_card() -> None:
    # Two cards. Longest first spreads the two 25 GiB cases over both cards, and the 70 GiB case (alone only)
    # waits for one to end: 3 s. Area first starts the 70 GiB case, and both 25 GiB cases then share the other
    # card (50 <= 68): 2 s, the optimum and the bound, so the planner stops there.
    demands = [case("big", 70.0, 1), case("a", 25.0, 2), case("b", 25.0, 2)]
    caps = [80.0, 80.0]
    default = simulate(demands, caps, NO_STAGGER)
    best = plan(demands, caps, NO_STAGGER, evaluations=50)
    assert default.makespan_s == 3.0
    assert best.makespan_s == 2.0 == brute_force_optimum(demands, caps, 0.15) == best.lower_bound_s
    assert best.rule.name == "area decreasing, spread" and best.evaluations == 2  # it stopped at the bound
    check_rules(best, demands, NO_STAGGER)
    assert plan(demands, caps, NO_STAGGER, evaluations=50) == best  # deterministic


def test_the_planner_search_finds_an_order_no_candidate_rule_has() -> None:
    demands = [case("c0", 30.0, 4), case("c1", 20.0, 1), case("c2", 20.0, 3), case("c3", 30.0, 2), case("c4", 40.0, 2)]
    caps = [80.0]
    candidates = [simulate(demands, caps, NO_STAGGER, r).makespan_s for r in candidate_rules(demands, caps, NO_STAGGER)]
    best = plan(demands, caps, NO_STAGGER, evaluations=60)
    assert best.makespan_s == brute_force_optimum(demands, caps, 0.15) == 6.0 < min(candidates)
    assert best.rule.name.endswith("+ local search")
    check_rules(best, demands, NO_STAGGER)


def test_candidate_rules_start_with_the_default_and_cover_area_and_conflicts() -> None:
    demands = [case("a", 40.0, 10), case("b", 40.0, 5), case("c", 5.0, 12)]
    rules = candidate_rules(demands, [80.0], Policy())
    assert rules[0] == Rule("longest first, spread")
    names = [r.name for r in rules]
    assert "area decreasing, spread" in names and "conflicts first, best fit" in names
    conflicts = next(r for r in rules if r.name == "conflicts first, spread")
    assert conflicts.rank is not None
    # a and b never share (80 > 68): that chain of 15 s goes first, longest first; c (the longest case) after.
    assert sorted(conflicts.rank, key=lambda k: conflicts.rank[k] if conflicts.rank else 0) == ["a", "b", "c"]
    assert math.isclose(lower_bound(demands, [80.0], 0.15).s, 15.0)


def test_cpu_budget_bounds_when_the_cgroup_quota_binds() -> None:
    policy = Policy(stagger_s=0.0, cpu_budget=2.0)
    caps = [80.0] * 4
    # Four 1-CPU cases under a 2-CPU budget: two at a time, whatever the GPUs hold.
    halves = [Demand(f"h{i}", 10.0, vram_gib=5.0, kv_cache_bytes=GIB, cpus=1.0) for i in range(4)]
    b = lower_bound(halves, caps, 0.15, cpu_budget=2.0)
    assert b.s == pytest.approx(20.0) and b.binding == "cpu area"
    assert lower_bound(halves, caps, 0.15).s == 10.0  # without a budget only the longest case binds
    assert simulate(halves, caps, policy).makespan_s == 20.0
    # Any two 1.5-CPU cases exceed the budget: one after another; a case over the budget runs alone (weight 1).
    heavy = [Demand(f"x{i}", 10.0, vram_gib=5.0, kv_cache_bytes=GIB, cpus=c) for i, c in enumerate((1.5, 1.5, 8.0))]
    b = lower_bound(heavy, caps, 0.15, cpu_budget=2.0)
    assert b.parts["cpu conflicts"] == 30.0 and b.parts["cpu area"] == pytest.approx(7.5 + 7.5 + 10.0)
    assert simulate(heavy, caps, policy).makespan_s == b.s == 30.0
