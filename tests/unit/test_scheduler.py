"""Packing decisions as pure functions: budgets, margins, measured free memory, fillers, gangs, starvation,
stagger, retries, the CPU budget and refusal; then the planner, the lower bound and sharding."""

from __future__ import annotations

import math

import pytest

from harness.gpu.scheduler import (
    Demand,
    GpuState,
    Policy,
    Running,
    earliest_fit_s,
    fit_reason,
    lower_bound_s,
    order,
    parse_shard,
    plan_step,
    refusal,
    shard,
    should_retry,
    simulate,
    stagger_wait,
    start_on,
)

GIB = 1024**3
KV = 2 * GIB
NO_STAGGER = Policy(stagger_s=0.0)


def case(name: str, gib: float | None = 10.0, dur: float = 60.0, gpus: int = 1, kv: int | None = KV, cpus=1.0):
    return Demand(name, dur, gpus=gpus, vram_gib=gib, kv_cache_bytes=kv, cpus=cpus)


def gpu(i: int = 0, cap: float = 80.0, *running: Running, free: float | None = None, last: float | None = None):
    return GpuState(i, cap, tuple(running), free, last)


def run(name: str, gib: float, ends: float = 100.0, exclusive: bool = False) -> Running:
    return Running(name, gib, 0.0, ends, exclusive)


# -- admission: budget, margin, measured free ------------------------------------------------------------------


def test_an_empty_gpu_takes_a_case_up_to_its_whole_capacity() -> None:
    assert fit_reason(case("a", 80.0), gpu(), Policy()) is None
    assert "budget" in (fit_reason(case("a", 80.5), gpu(), Policy()) or "")


def test_a_shared_gpu_keeps_the_margin_free() -> None:
    policy = Policy(share_margin=0.15)  # 80 GiB card: a second case may bring the total to 68 GiB, not more
    busy = gpu(0, 80.0, run("x", 40.0))
    assert fit_reason(case("a", 28.0), busy, policy) is None
    reason = fit_reason(case("a", 28.5), busy, policy)
    assert reason is not None and "15%" in reason
    # Without a margin the same case fits.
    assert fit_reason(case("a", 28.5), busy, Policy(share_margin=0.0)) is None


def test_measured_free_memory_can_refuse_what_the_budget_allows() -> None:
    # The budget says 70 GiB are free; a process nobody reserved (or a case over its profile) holds 40 of them.
    empty_but_used = gpu(0, 80.0, free=30.0)
    assert fit_reason(case("a", 30.0), empty_but_used, Policy()) is None
    assert "measured free" in (fit_reason(case("a", 31.0), empty_but_used, Policy()) or "")
    # When sharing, the measured free memory must also cover the margin (12 GiB of 80).
    shared = gpu(0, 80.0, run("x", 10.0), free=40.0)
    assert fit_reason(case("a", 28.0), shared, Policy()) is None
    assert "measured free" in (fit_reason(case("a", 29.0), shared, Policy()) or "")


def test_unknown_vram_gets_a_whole_gpu_and_blocks_others() -> None:
    unknown = case("u", gib=None, kv=None)
    assert fit_reason(unknown, gpu(), Policy()) is None
    assert fit_reason(unknown, gpu(0, 80.0, run("x", 1.0)), Policy()) is not None
    taken = gpu(0, 80.0, run("u", 80.0, exclusive=True))
    assert "unknown VRAM" in (fit_reason(case("a", 1.0), taken, Policy()) or "")
    # A foreign process on the card is enough to keep it off.
    assert fit_reason(unknown, gpu(free=60.0), Policy()) is not None


def test_start_on_reserves_and_debits_the_measured_free_memory() -> None:
    after = start_on(gpu(0, 80.0, free=70.0), case("a", 20.0, dur=30.0), now_s=5.0)
    assert after.reserved_gib == 20.0 and after.free_gib == 50.0 and after.last_start_s == 5.0
    assert after.running[0].ends_s == 35.0


# -- plan_step -------------------------------------------------------------------------------------------------


def test_longest_first_and_spread_over_gpus() -> None:
    pending = [case("short", dur=10), case("long", dur=100), case("mid", dur=50)]
    assert [d.case_id for d in order(pending)] == ["long", "mid", "short"]
    step = plan_step(pending, [gpu(0), gpu(1)], 0.0, NO_STAGGER)
    placed = {p.case_id: p.gpus for p in step.starts}
    assert placed["long"] == (0,) and placed["mid"] == (1,)  # an empty card before a shared one
    assert placed["short"] in ((0,), (1,))


def test_packs_by_budget_and_stops_when_full() -> None:
    pending = [case(f"c{i}", 30.0, dur=60 - i) for i in range(4)]
    step = plan_step(pending, [gpu(0, 80.0)], 0.0, NO_STAGGER)
    # 30 alone, then 30 + 30 = 60 <= 68 (85% of 80), a third would make 90.
    assert [p.case_id for p in step.starts] == ["c0", "c1"]
    assert set(step.blocked) == {"c2", "c3"}
    assert step.gpus[0].reserved_gib == 60.0


def test_fillers_need_no_gpu_and_run_beside_full_cards() -> None:
    full = gpu(0, 80.0, run("big", 80.0))
    step = plan_step([case("filler", gib=0.0, gpus=0, kv=None, dur=5), case("a", 10.0)], [full], 0.0, NO_STAGGER)
    assert [(p.case_id, p.gpus) for p in step.starts] == [("filler", ())]
    assert "a" in step.blocked


def test_a_gang_starts_on_all_its_gpus_or_none() -> None:
    gang = case("tp2", 40.0, gpus=2, dur=100)
    two_free = plan_step([gang], [gpu(0), gpu(1), gpu(2, 80.0, run("x", 70.0))], 0.0, NO_STAGGER)
    assert two_free.starts[0].gpus == (0, 1)
    one_free = plan_step([gang], [gpu(0), gpu(1, 80.0, run("x", 70.0))], 0.0, NO_STAGGER)
    assert one_free.starts == () and "tp2" in one_free.blocked
    # Every GPU of the gang is reserved.
    assert [g.reserved_gib for g in two_free.gpus] == [40.0, 40.0, 70.0]


def test_a_blocked_large_case_holds_gpus_so_small_ones_cannot_starve_it() -> None:
    # gpu0 frees at t=50, gpu1 at t=200. The 70 GiB case is held on gpu0 from t=50.
    gpus = [gpu(0, 80.0, run("x", 30.0, ends=50.0)), gpu(1, 80.0, run("y", 30.0, ends=200.0))]
    big = case("big", 70.0, dur=80)
    long_small = case("long_small", 10.0, dur=60)  # would end at t=60 > 50: must not go on gpu0
    quick_small = case("quick", 10.0, dur=40)  # ends at t=40 <= 50: may backfill gpu0
    step = plan_step([big, long_small, quick_small], gpus, 0.0, NO_STAGGER)
    assert step.hold is not None and step.hold.case_id == "big"
    assert step.hold.gpus == (0,) and step.hold.at_s == 50.0
    placed = {p.case_id: p.gpus for p in step.starts}
    assert placed == {"long_small": (1,), "quick": (0,)}


def test_without_a_hold_the_same_small_case_would_take_the_freed_gpu() -> None:
    """The control for the test above: the hold is what keeps gpu0 for the big case."""
    gpus = [gpu(0, 80.0, run("x", 30.0, ends=50.0))]
    step = plan_step([case("long_small", 10.0, dur=60)], gpus, 0.0, NO_STAGGER)
    assert [p.gpus for p in step.starts] == [(0,)]


def test_earliest_fit_follows_predicted_ends() -> None:
    g = gpu(0, 80.0, run("a", 30.0, ends=20.0), run("b", 30.0, ends=90.0))
    assert earliest_fit_s(case("n", 20.0), g, 0.0, Policy()) == 20.0  # after a ends: 30 + 20 <= 68
    assert earliest_fit_s(case("n", 60.0), g, 0.0, Policy()) == 90.0
    assert earliest_fit_s(case("n", 81.0), g, 0.0, Policy()) == math.inf


def test_stagger_waits_after_a_start_on_the_same_gpu_only() -> None:
    policy = Policy(stagger_s=10.0)
    just_started = gpu(0, 80.0, run("a", 10.0), last=0.0)
    assert stagger_wait(just_started, 4.0, policy) == 6.0
    assert stagger_wait(just_started, 12.0, policy) == 0.0
    assert stagger_wait(gpu(0, last=0.0), 1.0, policy) == 0.0  # nothing runs there any more: no race
    step = plan_step([case("b", 10.0)], [just_started], 4.0, policy)
    assert step.starts == () and step.wake_s == 10.0 and "staggered" in step.blocked["b"]
    # Two cases may not start on one GPU in the same step either.
    both = plan_step([case("a", 10.0, dur=9), case("b", 10.0, dur=8)], [gpu(0)], 0.0, policy)
    assert [p.case_id for p in both.starts] == ["a"] and both.wake_s == 10.0
    # A second GPU takes the second case at once.
    spread = plan_step([case("a", 10.0, dur=9), case("b", 10.0, dur=8)], [gpu(0), gpu(1)], 0.0, policy)
    assert sorted(p.gpus for p in spread.starts) == [(0,), (1,)]


def test_cpu_budget_caps_concurrency_but_one_case_always_runs() -> None:
    policy = Policy(stagger_s=0.0, cpu_budget=2.0)
    step = plan_step([case("a", 1.0), case("b", 1.0), case("c", 1.0)], [gpu(0)], 0.0, policy)
    assert len(step.starts) == 2 and "CPU budget" in step.blocked["c"]
    heavy = plan_step([case("huge", 1.0, cpus=8.0)], [gpu(0)], 0.0, policy)
    assert [p.case_id for p in heavy.starts] == ["huge"]
    assert plan_step([case("huge", 1.0, cpus=8.0)], [gpu(0)], 0.0, policy, cpus_in_use=1.0).starts == ()


# -- retries and refusal --------------------------------------------------------------------------------------


def test_retries_only_transient_startup_failures_at_most_three_times() -> None:
    p = Policy()
    log = "worker0 exited: OSError: [Errno 98] Address already in use"
    assert should_retry(1, True, log, p)
    assert should_retry(3, True, log, p)
    assert not should_retry(4, True, log, p)  # three retries after the first run, no more
    assert not should_retry(1, True, "ValueError: unknown model", p)  # not a known transient cause
    assert not should_retry(1, False, log, p)  # a failed check is a verdict: never retried
    assert should_retry(1, True, "ValueError: Free memory on device (30.1/79.2 GiB) on startup is less", p)


def test_refuses_a_vram_profile_without_a_kv_cap() -> None:
    reason = refusal(case("nokv", 20.0, kv=None), [80.0])
    assert reason is not None and "requested_kv_cache_bytes" in reason and "OOM a neighbour" in reason
    assert refusal(case("ok", 20.0), [80.0]) is None
    assert refusal(case("unknown", None, kv=None), [80.0]) is None  # unknown VRAM runs alone instead
    assert "needs 2 GPU" in (refusal(case("gang", 20.0, gpus=2), [80.0]) or "")
    assert "GiB per GPU" in (refusal(case("huge", 90.0), [80.0, 80.0]) or "")


# -- planning ---------------------------------------------------------------------------------------------------


def test_simulate_matches_a_hand_schedule_and_refuses_up_front() -> None:
    demands = [case("a", 40.0, dur=100), case("b", 40.0, dur=60), case("c", 20.0, dur=30), case("x", 5, kv=None)]
    s = simulate(demands, [80.0], NO_STAGGER)
    assert set(s.refused) == {"x"}
    spans = {i.case_id: (i.start_s, i.end_s) for i in s.items}
    # a alone at 0; b would make 80 > 68 on a shared card: it waits; c (20) joins a at once.
    assert spans["a"] == (0.0, 100.0) and spans["c"] == (0.0, 30.0)
    # b is held from t=100 (when a ends) — and nothing else is left: it starts then.
    assert spans["b"] == (100.0, 160.0)
    assert s.makespan_s == 160.0 and s.sequential_s == 190.0
    # The plain bound (longest case, memory-seconds / capacity) says 100 s; but a and b can never share
    # the card (40 + 40 > 68 GiB), so they run one after the other: the honest bound is 160 s, met exactly.
    assert s.naive_lower_bound_s == max(100.0, (100 * 40 + 60 * 40 + 30 * 20) / 80.0) == 100.0
    assert s.lower_bound_s == 160.0 and s.vs_lower_bound == 1.0


def test_simulate_with_stagger_never_starts_two_cases_on_one_gpu_within_the_window() -> None:
    demands = [case(f"c{i}", 10.0, dur=100 - i) for i in range(4)]
    s = simulate(demands, [80.0], Policy(stagger_s=10.0))
    starts = sorted(i.start_s for i in s.items)
    assert starts == [0.0, 10.0, 20.0, 30.0]


def test_lower_bound_counts_gangs_and_unknown_vram_as_whole_cards() -> None:
    assert lower_bound_s([case("g", 80.0, dur=10, gpus=2)], [80.0, 80.0]) == 10.0
    assert lower_bound_s([case("u", None, kv=None, dur=10)] * 4, [80.0, 80.0]) == 20.0
    assert lower_bound_s([], [80.0]) == 0.0


def test_shards_balance_estimated_time_deterministically() -> None:
    demands = [case(f"c{i}", dur=d) for i, d in enumerate([100, 90, 50, 40, 30, 10])]
    shards = shard(demands, 2)
    loads = [sum(d.duration_s for d in s) for s in shards]
    # Longest first onto the lightest shard: 100+40+30 and 90+50+10; never further apart than one case.
    assert sorted(loads) == [150.0, 170.0]
    assert max(loads) - min(loads) <= max(d.duration_s for d in demands)
    assert shard(list(reversed(demands)), 2) == shards  # input order does not matter
    assert sorted(d.case_id for s in shards for d in s) == sorted(d.case_id for d in demands)


@pytest.mark.parametrize("text", ["0/4", "5/4", "1-4", "a/b", "", "2/"])
def test_parse_shard_rejects_bad_input(text: str) -> None:
    with pytest.raises(ValueError, match="--shard must look like i/n"):
        parse_shard(text)


def test_parse_shard() -> None:
    assert parse_shard("2/4") == (2, 4)
