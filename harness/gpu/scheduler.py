"""VRAM-aware packing of gate cases onto a node's GPUs: every decision is a pure function of the state.

Why packing: Dynamo's CI measured a reference run of 1,764 s with ~570 s of idle GPU when each case held a whole
GPU (ai-dynamo/dynamo PR #10126). Why *careful* packing: cases packed on stale VRAM marks flake or OOM, and a
mark corrected from 18.7 to the measured 7.6 GiB saved ~338 s (PR #12842). The rules, each its own function so
the unit tests can pin them:

- **admission** (``fit_reason``): a case goes on a GPU only if both the reserved budget (the sum of the
  ``profiled_vram_gib`` of what runs there) and the *measured* free memory allow it; when the card is shared,
  ``share_margin`` of it stays free (Dynamo keeps 15%). A case with no VRAM profile is unknown, so it gets a
  GPU to itself.
- **order** (``order``): longest first in GPU time (LPT), durations from earlier runs' reports, else an estimate.
- **fillers**: cases that need no GPU (``gpus == 0``) only take CPU, so they run whenever the CPU budget allows.
- **gangs**: a case needing k GPUs starts on k GPUs at once or not at all.
- **starvation** (``Hold``): the first case blocked for memory gets the GPUs that will fit it soonest; later
  cases may use those GPUs only if they are predicted to finish before it can start (EASY backfilling).
- **stagger** (``stagger_wait``): a start waits ``stagger_s`` after the last start on the same GPU while that
  one still runs (Dynamo waits 10 s, citing concurrent vLLM start-up races).
- **retries** (``should_retry``): a start-up failure with a known transient marker runs again, at most 3 times.
- **CPU budget**: the cgroup quota caps concurrent cases (one case always runs, whatever it needs).
- **refusal** (``refusal``): a case with a VRAM profile but no KV cap is refused, since it would take the
  engine's default KV cache (most of the card) and OOM a neighbour.

Verdicts do not depend on any of this: each case boots its own stack, and the gate's checks are per stack.
(Dynamo moved multimodal router tests back to a sequential stage because cache-overlap assertions changed
when tests shared a GPU, PR #8916; here the e2e test runs the same cases packed and sequentially and compares.)
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from harness.gpu.bounds import Bound, conflict_cliques, lower_bound, naive_lower_bound_s

#: Log text of a start-up failure worth retrying: races of concurrent start-ups, not bugs of the case.
TRANSIENT_MARKERS = (
    "Address already in use",  # a port taken between allocation and bind
    "Free memory on device",  # vLLM: a neighbour allocated during this engine's start-up memory profiling
    "CUDA out of memory",
    "CUDA error: out of memory",
    "NCCL error",
    "HARNESS_TRANSIENT",  # a launch script's own way of saying "try again"
)
EPS = 1e-9


@dataclass(frozen=True)
class Demand:
    """What one case asks of the node."""

    case_id: str
    duration_s: float
    gpus: int = 1  # 0 = a filler: needs no GPU
    vram_gib: float | None = None  # per GPU; None = unknown (the case gets whole GPUs)
    kv_cache_bytes: int | None = None
    cpus: float = 1.0
    duration_from: str = "estimate"  # "report" | "estimate" | "inventory"

    @property
    def filler(self) -> bool:
        return self.gpus == 0

    @property
    def exclusive(self) -> bool:
        return self.gpus > 0 and self.vram_gib is None


@dataclass(frozen=True)
class Policy:
    share_margin: float = 0.15  # Dynamo keeps 15% of a shared card free
    stagger_s: float = 10.0  # Dynamo waits 10 s between starts on one GPU
    max_retries: int = 3
    cpu_budget: float = math.inf
    transient_markers: tuple[str, ...] = TRANSIENT_MARKERS


@dataclass(frozen=True)
class Running:
    case_id: str
    gib: float  # reserved on this GPU
    started_s: float
    ends_s: float  # predicted
    exclusive: bool = False


@dataclass(frozen=True)
class GpuState:
    index: int
    capacity_gib: float
    running: tuple[Running, ...] = ()
    free_gib: float | None = None  # measured; None when nothing measures (planning)
    last_start_s: float | None = None

    @property
    def reserved_gib(self) -> float:
        return sum(r.gib for r in self.running)

    @property
    def has_exclusive(self) -> bool:
        return any(r.exclusive for r in self.running)


@dataclass(frozen=True)
class Placement:
    case_id: str
    gpus: tuple[int, ...]
    gib: float  # reserved per GPU
    exclusive: bool = False


@dataclass(frozen=True)
class Hold:
    """GPUs kept for a blocked case until ``at_s``, when it is predicted to fit."""

    case_id: str
    gpus: tuple[int, ...]
    at_s: float


@dataclass(frozen=True)
class Step:
    starts: tuple[Placement, ...]
    gpus: tuple[GpuState, ...]  # the state after the starts
    hold: Hold | None = None
    wake_s: float | None = None  # when a stagger expires: step again then
    blocked: dict[str, str] = field(default_factory=dict)


def budget_gib(d: Demand, capacity_gib: float) -> float:
    """What a case reserves per GPU: its profile, or the whole card when its VRAM is unknown."""
    return capacity_gib if d.vram_gib is None else d.vram_gib


def refusal(d: Demand, capacities_gib: Sequence[float]) -> str | None:
    """Why a case must not run on this node at all (None: it may)."""
    if d.vram_gib is not None and d.gpus > 0 and not d.kv_cache_bytes:
        return (
            f"{d.case_id}: has profiled_vram_gib={d.vram_gib:g} but no requested_kv_cache_bytes; without a KV cap "
            f"the engine takes its default (most of the card) and would OOM a neighbour"
        )
    if d.gpus > len(capacities_gib):
        return f"{d.case_id}: needs {d.gpus} GPU(s), the node has {len(capacities_gib)}"
    if d.gpus > 0 and d.vram_gib is not None:
        big = sorted(capacities_gib, reverse=True)[d.gpus - 1]
        if d.vram_gib > big:
            return f"{d.case_id}: needs {d.vram_gib:g} GiB per GPU, the node's GPUs hold {big:g} GiB"
    return None


def fit_reason(d: Demand, gpu: GpuState, policy: Policy) -> str | None:
    """Why ``d`` cannot go on ``gpu`` now, for memory (None: it fits). Both the reserved budget and the measured
    free memory must allow it; a shared card keeps ``share_margin`` of itself free."""
    if gpu.has_exclusive:
        return f"gpu{gpu.index} runs a case of unknown VRAM"
    shared = bool(gpu.running)
    margin = policy.share_margin * gpu.capacity_gib
    if d.exclusive:
        if shared:
            return f"gpu{gpu.index} is not empty (unknown VRAM needs a whole GPU)"
        if gpu.free_gib is not None and gpu.free_gib + EPS < gpu.capacity_gib - margin:
            return f"gpu{gpu.index}: measured free {gpu.free_gib:.1f} GiB; a case of unknown VRAM needs the card"
        return None
    need = budget_gib(d, gpu.capacity_gib)
    limit = gpu.capacity_gib - (margin if shared else 0.0)
    if gpu.reserved_gib + need > limit + EPS:
        return f"gpu{gpu.index}: budget {gpu.reserved_gib:g} + {need:g} GiB > {limit:g} GiB" + (
            f" ({policy.share_margin:.0%} kept free on a shared card)" if shared else ""
        )
    if gpu.free_gib is not None and gpu.free_gib + EPS < need + (margin if shared else 0.0):
        return f"gpu{gpu.index}: measured free {gpu.free_gib:.1f} GiB < {need + (margin if shared else 0.0):.1f} GiB"
    return None


def stagger_wait(gpu: GpuState, now_s: float, policy: Policy) -> float:
    """Seconds a new start on ``gpu`` must still wait: only while the last case started there still runs
    (concurrent engine start-ups on one card race for the same free memory)."""
    if not gpu.running or gpu.last_start_s is None:
        return 0.0
    return max(0.0, gpu.last_start_s + policy.stagger_s - now_s)


def order(pending: Iterable[Demand]) -> list[Demand]:
    """Longest first, in GPU time (a gang of k GPUs counts k times: placed late, it would wait for k cards at
    once and stretch the tail); ties: more VRAM, then id (deterministic)."""
    return sorted(
        pending, key=lambda d: (-d.duration_s * max(1, d.gpus), -d.gpus, -(d.vram_gib or math.inf), d.case_id)
    )


def earliest_fit_s(d: Demand, gpu: GpuState, now_s: float, policy: Policy) -> float:
    """When ``d`` would fit ``gpu`` by budget, as its running cases end at their predicted times (inf: never)."""
    state = replace(gpu, free_gib=None)
    if fit_reason(d, state, policy) is None:
        return now_s
    for r in sorted(gpu.running, key=lambda r: r.ends_s):
        state = replace(state, running=tuple(x for x in state.running if x is not r))
        if fit_reason(d, state, policy) is None:
            return max(now_s, r.ends_s)
    return math.inf


def start_on(gpu: GpuState, d: Demand, now_s: float) -> GpuState:
    """The GPU's state after ``d`` starts on it (budget reserved, measured free debited until it is re-read)."""
    gib = budget_gib(d, gpu.capacity_gib)
    run = Running(d.case_id, gib, now_s, now_s + d.duration_s, exclusive=d.exclusive)
    free = None if gpu.free_gib is None else gpu.free_gib - gib
    return replace(gpu, running=(*gpu.running, run), free_gib=free, last_start_s=now_s)


Fit = Literal["spread", "best_fit"]


@dataclass(frozen=True)
class Rule:
    """How ``plan_step`` orders the pending cases and picks their GPUs; every admission rule holds under any
    rule. The default is longest-first and spreading; the planner (``plan``) may find a better one for a suite
    on predicted durations, and a packed run then dispatches by the same rule."""

    name: str = "longest first"
    rank: Mapping[str, int] | None = None  # case id -> priority (lower first); None = ``order``
    fit: Fit = "spread"

    def ordered(self, pending: Iterable[Demand]) -> list[Demand]:
        if self.rank is None:
            return order(pending)
        rank = self.rank
        # A case the rank does not know (none in a planned run) goes after the ranked ones, longest first.
        return sorted(order(pending), key=lambda d: rank.get(d.case_id, len(rank)))


DEFAULT_RULE = Rule()


def _pick(cands: list[GpuState], k: int, fit: Fit = "spread") -> list[GpuState]:
    """``spread``: fewest running cases first (engines on one card contend for compute), then the fullest,
    then index. ``best_fit``: the fullest first (keeps whole cards free for large cases and gangs), then the
    fewest running."""
    if fit == "best_fit":
        return sorted(cands, key=lambda g: (-g.reserved_gib, len(g.running), g.index))[:k]
    return sorted(cands, key=lambda g: (len(g.running), -g.reserved_gib, g.index))[:k]


def plan_step(
    pending: Sequence[Demand],
    gpus: Sequence[GpuState],
    now_s: float,
    policy: Policy,
    cpus_in_use: float = 0.0,
    rule: Rule = DEFAULT_RULE,
) -> Step:
    """Which pending cases start now, and on which GPUs. Pure: the caller applies ``starts`` and calls again
    when a case ends, at ``wake_s``, or when it has a fresh measurement."""
    state = {g.index: g for g in gpus}
    busy = cpus_in_use > 0 or any(g.running for g in gpus)
    cpu = cpus_in_use
    starts: list[Placement] = []
    hold: Hold | None = None
    wake: float | None = None
    blocked: dict[str, str] = {}
    for d in rule.ordered(pending):
        if cpu + d.cpus > policy.cpu_budget + EPS and (busy or starts):
            blocked[d.case_id] = f"CPU budget {policy.cpu_budget:g} in use ({cpu:g})"
            continue
        if d.filler:
            starts.append(Placement(d.case_id, (), 0.0))
            cpu += d.cpus
            continue
        ready: list[GpuState] = []
        waits: list[float] = []
        reasons: list[str] = []
        for g in state.values():
            reason = fit_reason(d, g, policy)
            if reason:
                reasons.append(reason)
                continue
            if hold is not None and g.index in hold.gpus and now_s + d.duration_s > hold.at_s + EPS:
                reasons.append(f"gpu{g.index} is held for {hold.case_id} from t={hold.at_s:.0f}s")
                continue
            w = stagger_wait(g, now_s, policy)
            if w > 0:
                waits.append(now_s + w)
                continue
            ready.append(g)
        if len(ready) >= d.gpus:
            chosen = _pick(ready, d.gpus, rule.fit)
            gib = budget_gib(d, chosen[0].capacity_gib)
            starts.append(Placement(d.case_id, tuple(sorted(g.index for g in chosen)), gib, d.exclusive))
            for g in chosen:
                state[g.index] = start_on(g, d, now_s)
            cpu += d.cpus
            continue
        if len(ready) + len(waits) >= d.gpus:
            wake = min([wake, *waits]) if wake is not None else min(waits)
            blocked[d.case_id] = f"staggered start (after {policy.stagger_s:g} s on the same GPU)"
            continue
        blocked[d.case_id] = "; ".join(reasons) or "no GPU"
        if hold is None:
            times = sorted((earliest_fit_s(d, g, now_s, policy), g.index) for g in state.values())[: d.gpus]
            if len(times) == d.gpus and all(math.isfinite(t) for t, _ in times):
                hold = Hold(d.case_id, tuple(sorted(i for _, i in times)), max(t for t, _ in times))
    return Step(tuple(starts), tuple(state[i] for i in sorted(state)), hold, wake, blocked)


def should_retry(attempts: int, startup_failed: bool, log_text: str, policy: Policy) -> bool:
    """Retry only a start-up failure that names a known transient cause, and at most ``max_retries`` times
    (``attempts`` counts the runs so far, the first included). A failed check is a verdict, never retried."""
    if not startup_failed or attempts > policy.max_retries:
        return False
    return any(m in log_text for m in policy.transient_markers)


# -- planning: a discrete-event run of the same decisions on predicted durations ------------------------------


@dataclass(frozen=True)
class Scheduled:
    case_id: str
    gpus: tuple[int, ...]
    start_s: float
    end_s: float
    gib: float


@dataclass(frozen=True)
class Schedule:
    items: tuple[Scheduled, ...]
    refused: dict[str, str]
    capacities_gib: tuple[float, ...]
    sequential_s: float
    lower_bound_s: float
    naive_lower_bound_s: float = 0.0  # the plain bound, for comparison with earlier figures
    bound: Bound | None = None  # which argument gives ``lower_bound_s`` (``harness.gpu.bounds``)
    rule: Rule = DEFAULT_RULE  # the dispatch rule these decisions followed
    evaluations: int = 1  # schedules the planner replayed to choose ``rule``

    @property
    def makespan_s(self) -> float:
        return max((i.end_s for i in self.items), default=0.0)

    @property
    def speedup(self) -> float:
        return self.sequential_s / self.makespan_s if self.makespan_s else 1.0

    @property
    def vs_lower_bound(self) -> float:
        return self.makespan_s / self.lower_bound_s if self.lower_bound_s else 1.0

    @property
    def vs_naive_bound(self) -> float:
        return self.makespan_s / self.naive_lower_bound_s if self.naive_lower_bound_s else 1.0


def lower_bound_s(
    demands: Sequence[Demand],
    capacities_gib: Sequence[float],
    share_margin: float = Policy.share_margin,
    cpu_budget: float = math.inf,
) -> float:
    """No schedule that obeys these rules ends earlier (``harness.gpu.bounds``: the longest case, the
    margin-aware memory-time area, cases that can never share a card run as on parallel machines, the CPU
    budget)."""
    return lower_bound(demands, capacities_gib, share_margin, cpu_budget).s


def _replay(
    demands: Sequence[Demand], capacities_gib: Sequence[float], policy: Policy, rule: Rule
) -> tuple[list[Scheduled], dict[str, str]]:
    """``plan_step``'s decisions against the clock of predicted durations: (what ran, what was refused)."""
    refused = {d.case_id: r for d in demands if (r := refusal(d, capacities_gib))}
    pending = [d for d in demands if d.case_id not in refused]
    by_id = {d.case_id: d for d in pending}
    gpus = tuple(GpuState(i, c) for i, c in enumerate(capacities_gib))
    now, cpu = 0.0, 0.0
    running: list[Scheduled] = []
    done: list[Scheduled] = []
    while pending or running:
        step = plan_step(pending, gpus, now, policy, cpu, rule)
        gpus = step.gpus
        for p in step.starts:
            d = by_id[p.case_id]
            running.append(Scheduled(p.case_id, p.gpus, now, now + d.duration_s, p.gib))
            cpu += d.cpus
        started = {p.case_id for p in step.starts}
        pending = [d for d in pending if d.case_id not in started]
        events = [r.end_s for r in running] + ([step.wake_s] if step.wake_s is not None else [])
        if not events:
            for d in pending:  # nothing runs and nothing can start: it never will
                refused[d.case_id] = f"{d.case_id}: never fits ({step.blocked.get(d.case_id, 'blocked')})"
            break
        now = max(now, min(events))
        for ended in [x for x in running if x.end_s <= now + EPS]:
            running.remove(ended)
            done.append(ended)
            cpu -= by_id[ended.case_id].cpus
            gpus = tuple(replace(g, running=tuple(x for x in g.running if x.case_id != ended.case_id)) for g in gpus)
    return done, refused


def _schedule(
    demands: Sequence[Demand],
    capacities_gib: Sequence[float],
    policy: Policy,
    rule: Rule,
    done: list[Scheduled],
    refused: dict[str, str],
    evaluations: int = 1,
) -> Schedule:
    by_id = {d.case_id: d for d in demands}
    ran = [by_id[s.case_id] for s in done]
    bound = lower_bound(ran, capacities_gib, policy.share_margin, policy.cpu_budget)
    return Schedule(
        items=tuple(sorted(done, key=lambda s: (s.start_s, s.case_id))),
        refused=refused,
        capacities_gib=tuple(capacities_gib),
        sequential_s=sum(d.duration_s for d in ran),
        lower_bound_s=bound.s,
        naive_lower_bound_s=naive_lower_bound_s(ran, capacities_gib),
        bound=bound,
        rule=rule,
        evaluations=evaluations,
    )


def simulate(
    demands: Sequence[Demand], capacities_gib: Sequence[float], policy: Policy, rule: Rule = DEFAULT_RULE
) -> Schedule:
    """Run the scheduler against the clock of predicted durations under one dispatch rule."""
    done, refused = _replay(demands, capacities_gib, policy, rule)
    return _schedule(demands, capacities_gib, policy, rule, done, refused)


def _area(d: Demand, card_gib: float) -> float:
    """Memory x duration: what a case takes of the node (a case of unknown VRAM takes whole cards)."""
    return d.duration_s * d.gpus * budget_gib(d, card_gib)


def candidate_rules(demands: Sequence[Demand], capacities_gib: Sequence[float], policy: Policy) -> list[Rule]:
    """The planner's starting points, the default first (it wins ties):

    - longest first in GPU time (LPT), the default;
    - best-fit decreasing by memory x duration area: the cases that fill most of the node's memory-time go
      first, while every card is still empty enough to take them;
    - conflicts first: the largest set of cases that can never share a card (``bounds.conflict_cliques``) is
      a chain of whole-card work, the critical path of the suite; it goes first, longest first, the rest by area.

    each with the spreading GPU choice and with best fit."""
    rank_of = {d.case_id: i for i, d in enumerate(order(demands))}
    cap = max(capacities_gib, default=0.0)
    by_area = sorted(demands, key=lambda d: (-_area(d, cap), rank_of[d.case_id]))
    cliques = conflict_cliques(demands, (1.0 - policy.share_margin) * cap)
    chain = max(cliques, key=lambda c: (sum(d.duration_s * d.gpus for d in c), len(c)), default=[])
    ids = {d.case_id for d in chain}
    first = order(chain) + [d for d in by_area if d.case_id not in ids]

    def ranked(ds: Sequence[Demand]) -> dict[str, int]:
        return {d.case_id: i for i, d in enumerate(ds)}

    orders: list[tuple[str, dict[str, int] | None]] = [
        ("longest first", None),
        ("area decreasing", ranked(by_area)),
        ("conflicts first", ranked(first)),
    ]
    fits: tuple[Fit, ...] = ("spread", "best_fit")
    return [Rule(f"{name}, {fit.replace('_', ' ')}", rank, fit) for fit in fits for name, rank in orders]


def plan(
    demands: Sequence[Demand],
    capacities_gib: Sequence[float],
    policy: Policy,
    evaluations: int = 200,
    seed: int = 0,
) -> Schedule:
    """The dispatch rule with the shortest predicted makespan: the candidate rules, then a local search over
    the priority (move one case elsewhere in the order; keep the move unless the makespan grows) for at most
    ``evaluations`` replays in all, stopping at the lower bound. Deterministic for a seed. Every replay makes
    the same ``plan_step`` decisions a packed run makes, so every admission rule holds in what it picks; a run
    then dispatches by the returned ``Schedule.rule`` (its order is a priority, not a timetable: starts still
    wait for budget, measured memory, stagger and the CPU budget)."""
    runnable = [d for d in demands if not refusal(d, capacities_gib)]
    bound = lower_bound(runnable, capacities_gib, policy.share_margin, policy.cpu_budget).s
    best: tuple[float, Rule, list[Scheduled], dict[str, str]] | None = None
    used = 0
    for rule in candidate_rules(demands, capacities_gib, policy)[: max(1, evaluations)]:
        done, refused = _replay(demands, capacities_gib, policy, rule)
        used += 1
        mk = max((x.end_s for x in done), default=0.0)
        if best is None or mk < best[0] - EPS:
            best = (mk, rule, done, refused)
        if best[0] <= bound + EPS:
            break
    assert best is not None
    rng = random.Random(seed)
    base = best[1]
    ids = [d.case_id for d in base.ordered(demands)]
    cur_mk = best[0]
    while used < evaluations and best[0] > bound + EPS and len(ids) > 1:
        i, j = rng.randrange(len(ids)), rng.randrange(len(ids) - 1)
        trial = ids[:i] + ids[i + 1 :]
        trial.insert(j if j < i else j + 1, ids[i])
        rule = Rule(f"{base.name} + local search", {c: k for k, c in enumerate(trial)}, base.fit)
        done, refused = _replay(demands, capacities_gib, policy, rule)
        used += 1
        mk = max((x.end_s for x in done), default=0.0)
        if mk <= cur_mk + EPS:  # sideways moves too: makespan plateaus are wide
            ids, cur_mk = trial, mk
            if mk < best[0] - EPS:
                best = (mk, rule, done, refused)
    return _schedule(demands, capacities_gib, policy, best[1], best[2], best[3], used)


# -- sharding across CI nodes ---------------------------------------------------------------------------------


def parse_shard(text: str, flag: str = "--shard") -> tuple[int, int]:
    """``i/n`` with 1 <= i <= n (a CI matrix counts from 1)."""
    head, sep, tail = (text or "").partition("/")
    if sep and head.strip().isdigit() and tail.strip().isdigit():
        i, n = int(head), int(tail)
        if 1 <= i <= n:
            return i, n
    raise ValueError(f"{flag} must look like i/n with 1 <= i <= n (e.g. 1/4), got {text!r}")


def shard(demands: Sequence[Demand], n: int) -> list[list[Demand]]:
    """Split by estimated GPU time, longest first onto the lightest shard. Deterministic, so every node of a CI
    matrix computes the same split from the same durations."""
    shards: list[list[Demand]] = [[] for _ in range(n)]
    loads = [0.0] * n
    for d in order(demands):
        i = min(range(n), key=lambda k: (loads[k], k))
        shards[i].append(d)
        loads[i] += d.duration_s * max(1, d.gpus)
    return shards
