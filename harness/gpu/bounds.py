"""Lower bounds on the makespan of ANY schedule that obeys the packing rules, to judge the scheduler against.

The rules a schedule must obey, per card and at every instant (``scheduler.fit_reason``): the cases running on
a card are either one case alone (its budget up to the whole card) or several whose budgets sum to at most
``B = (1 - share_margin) x capacity`` (Dynamo keeps 15% of a shared card free); a case of unknown VRAM runs
alone; a gang of k GPUs holds k distinct cards for its whole duration; a filler holds no card. Anything else the
scheduler does (stagger, CPU budget, measured free memory) only adds constraints, so a bound that ignores it
stays a bound.

The issue's plain bound, ``max(longest case, GPU memory-seconds / capacity)``, is valid but loose: with the
margin no shared card is ever more than 85% reserved, and a case alone on a card wastes the rest of it. Three
arguments, each a true bound, and the bound is their maximum:

1. **longest**: no schedule ends before its longest case.
2. **area with dual feasible functions** (Fekete & Schepers, "New classes of fast lower bounds for bin packing
   problems", Math. Programming 91, 2001): give each case a weight ``w`` per card it holds such that every set
   of cases that may run together on one card weighs at most 1. Then at any instant the running cases weigh at
   most N (one per card), so ``sum(w x duration x gpus) <= N x makespan``. With sizes ``x = budget / B``:
   a case alone may have ``x`` up to ``capacity / B``, several together sum to ``x <= 1``. So any dual
   feasible function ``f`` of bin packing (``sum x <= 1 => sum f(x) <= 1``, ``f <= 1``) works once a case that
   can only run alone (unknown VRAM, or ``x > 1``) weighs 1. Used: ``min(1, x)`` (the margin-aware area: a
   shared card holds 85%); ``f_eps`` (1 above ``1 - eps``, ``x`` between, 0 below ``eps``: cases that fill a
   card count whole); and ``u_k`` (``x`` where ``(k+1) x`` is whole, else ``floor((k+1) x) / k``: at most k
   cases above ``1/(k+1)`` share a card).
3. **conflict cliques as parallel machines**: two cases conflict when they can never share a card (their
   budgets sum above ``B``, or one runs alone). Cases that pairwise conflict never overlap on a card, so they
   form an instance of P||Cmax on the N cards (a gang as k jobs on distinct cards; the gang's simultaneity
   dropped, a relaxation). Its optimum, found exactly by a small branch and bound (or, past a node limit, the
   pigeonhole bound: among the kN+1 longest jobs some card runs k+1), bounds the makespan. Conflict is a
   threshold relation on sizes, so the maximal cliques are few: for each case s, s with every case at least
   as large as s whose size exceeds ``B - size(s)``.

4. **CPU budget** (``Policy.cpu_budget``, from the cgroup quota): the cases running at once need at most the
   budget in CPUs, or one case runs alone; so argument 2 with the budget as one card (weight
   ``min(1, cpus / budget)``, fillers included) and argument 3 for cases whose CPUs together exceed it.

Heterogeneous nodes use the largest card for ``B`` and the capacity (every weight and every conflict is then
judged as generously as any card could allow), so the bound stays valid there too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.gpu.scheduler import Demand

#: The scheduler admits a reservation up to its limit + EPS (``scheduler.EPS``); the bound allows the same.
EPS = 1e-9
#: Search nodes per P||Cmax instance before falling back to the pigeonhole bound (still a bound, just weaker).
NODE_LIMIT = 200_000


@dataclass(frozen=True)
class Bound:
    """The bound and the argument that gives it (``parts``: every argument's value, for the benchmark)."""

    s: float
    binding: str
    parts: dict[str, float]


def naive_lower_bound_s(demands: Sequence[Demand], capacities_gib: Sequence[float]) -> float:
    """The issue's plain bound: the longest case, or the GPU memory-seconds (a case of unknown VRAM counted
    at a whole card) over the node's total memory. Valid, but it ignores the margin and whole-card cases."""
    if not demands:
        return 0.0
    total = sum(capacities_gib) or 1.0
    mean = total / max(1, len(capacities_gib))
    gib_s = sum(d.duration_s * d.gpus * (mean if d.vram_gib is None else d.vram_gib) for d in demands if d.gpus)
    return max(max(d.duration_s for d in demands), gib_s / total)


def _size(d: Demand, shared_gib: float) -> float:
    """``budget / B``; ``inf`` for a case that can only ever run alone (unknown VRAM, or more than B)."""
    if d.vram_gib is None or d.vram_gib > shared_gib:
        return math.inf
    return d.vram_gib / shared_gib


def _f_eps(eps: float) -> Callable[[float], float]:
    def f(x: float) -> float:
        if x > 1.0 - eps:
            return 1.0
        return 0.0 if x < eps else x

    return f


def _u_k(k: int) -> Callable[[float], float]:
    def u(x: float) -> float:
        if x >= 1.0:
            return 1.0
        y = (k + 1) * x
        j = round(y)
        if abs(y - j) <= 1e-9:  # on a step: take the lower side, so float error never raises the weight
            return (j - 1) / k if j >= 1 else 0.0
        return math.floor(y) / k

    return u


def area_bounds(demands: Sequence[Demand], n_cards: int, shared_gib: float) -> dict[str, float]:
    """Argument 2 for each dual feasible function tried: ``sum(f(x) x duration x gpus) / N``."""
    items = [(_size(d, shared_gib), d.duration_s * d.gpus) for d in demands if d.gpus > 0]
    if not items or n_cards <= 0:
        return {}
    funcs: dict[str, Callable[[float], float]] = {"area": lambda x: min(1.0, x)}
    for x in sorted({x for x, _ in items if x <= 0.5}):
        funcs[f"area f_eps({x:.3f})"] = _f_eps(x)
    for k in range(1, 11):
        funcs[f"area u_{k}"] = _u_k(k)
    return {name: sum((1.0 if x > 1.0 else f(x)) * a for x, a in items) / n_cards for name, f in funcs.items()}


def conflict_cliques(demands: Sequence[Demand], shared_gib: float) -> list[list[Demand]]:
    """The maximal sets of GPU cases that pairwise can never share a card (argument 3)."""
    gpu = [d for d in demands if d.gpus > 0]
    limit = shared_gib + EPS

    def alone(d: Demand) -> bool:
        return d.vram_gib is None or d.vram_gib > limit

    def size(d: Demand) -> float:
        return math.inf if d.vram_gib is None else d.vram_gib

    cliques: list[list[Demand]] = []
    seen: set[frozenset[str]] = set()
    for s in gpu:
        members = [
            d
            for d in gpu
            if d is s
            or (size(d) >= size(s) and (alone(d) or alone(s) or size(d) + size(s) > limit))
        ]
        key = frozenset(d.case_id for d in members)
        if key not in seen:
            seen.add(key)
            cliques.append(members)
    return cliques


def _pigeonhole(jobs: Sequence[float], n: int) -> float:
    """P||Cmax bounds from counting: the longest job, the mean load, and for k >= 1 the k+1 shortest of the
    kN+1 longest jobs (some machine runs k+1 of them one after another)."""
    p = sorted(jobs, reverse=True)
    best = max(p[0], sum(p) / n)
    k = 1
    while k * n + 1 <= len(p):
        best = max(best, sum(p[k * n - k : k * n + 1]))
        k += 1
    return best


def parallel_machines_bound(jobs: Sequence[tuple[float, str]], n: int, node_limit: int = NODE_LIMIT) -> float:
    """The optimal makespan of P||Cmax for ``jobs`` (duration, group) on ``n`` machines, where jobs of one
    group (a gang's k GPUs) go to distinct machines; the pigeonhole bound if the search passes ``node_limit``.
    Either way no schedule of these jobs beats it."""
    if not jobs:
        return 0.0
    order = sorted(jobs, key=lambda j: (-j[0], j[1]))  # a gang's jobs are adjacent: same duration, same group
    lb = _pigeonhole([p for p, _ in order], n)
    if len(order) <= n:
        return max(p for p, _ in order)
    if any(sum(1 for _, h in order if h == g) > n for _, g in order):
        return lb  # a gang wider than the node: never scheduled (refused), nothing better to say
    # Upper bound to prune with: longest job onto the least loaded machine that has no job of its group.
    loads = [0.0] * n
    groups: list[set[str]] = [set() for _ in range(n)]
    for p, g in order:
        i = min((i for i in range(n) if g not in groups[i]), key=lambda i: loads[i])
        loads[i] += p
        groups[i].add(g)
    best = max(loads)
    if best <= lb + EPS:
        return best
    loads = [0.0] * n
    groups = [set() for _ in range(n)]
    nodes = 0

    def dfs(i: int) -> bool:  # False: node limit reached
        nonlocal best, nodes
        nodes += 1
        if nodes > node_limit:
            return False
        if i == len(order):
            best = max(loads)
            return True
        p, g = order[i]
        tried: set[tuple[float, bool]] = set()
        for m in sorted(range(n), key=lambda m: loads[m]):
            if g in groups[m] or loads[m] + p >= best - EPS:
                continue
            key = (loads[m], bool(groups[m] & {g}))
            if key in tried:  # same load, same standing for this group: a symmetric branch
                continue
            tried.add(key)
            loads[m] += p
            groups[m].add(g)
            ok = dfs(i + 1)
            loads[m] -= p
            groups[m].discard(g)
            if not ok:
                return False
            if best <= lb + EPS:
                return True
        return True

    return best if dfs(0) else lb


def cpu_bounds(demands: Sequence[Demand], cpu_budget: float) -> dict[str, float]:
    """Argument 4: the CPU budget as one resource that several cases share or one case holds alone."""
    if not demands or not math.isfinite(cpu_budget) or cpu_budget <= 0:
        return {}
    parts = {"cpu area": sum(min(1.0, d.cpus / cpu_budget) * d.duration_s for d in demands)}
    for s in demands:  # cases that pairwise exceed the budget run one after another
        chain = [d for d in demands if d is s or (d.cpus >= s.cpus and d.cpus + s.cpus > cpu_budget + EPS)]
        if len(chain) > 1:
            parts["cpu conflicts"] = max(parts.get("cpu conflicts", 0.0), sum(d.duration_s for d in chain))
    return parts


def lower_bound(
    demands: Sequence[Demand],
    capacities_gib: Sequence[float],
    share_margin: float,
    cpu_budget: float = math.inf,
) -> Bound:
    """The maximum of the arguments (module docstring), with the one that binds named."""
    if not demands:
        return Bound(0.0, "empty", {})
    n = len(capacities_gib)
    cap = max(capacities_gib, default=0.0)
    shared = (1.0 - share_margin) * cap
    parts: dict[str, float] = {"longest": max(d.duration_s for d in demands)}
    if n:
        parts.update(area_bounds(demands, n, shared + EPS))
        for clique in conflict_cliques(demands, shared):
            jobs = [(d.duration_s, str(i)) for i, d in enumerate(clique) for _ in range(d.gpus)]
            if len(jobs) > n:
                name = f"conflicts ({len(clique)} cases that never share a card, smallest {clique_floor(clique)})"
                parts[name] = max(parts.get(name, 0.0), parallel_machines_bound(jobs, n))
    parts.update(cpu_bounds(demands, cpu_budget))
    binding = max(parts, key=lambda k: parts[k])
    return Bound(parts[binding], binding, parts)


def clique_floor(clique: Sequence[Demand]) -> str:
    """The smallest budget in a conflict clique, for the binding argument's name."""
    sizes = [d.vram_gib for d in clique if d.vram_gib is not None]
    return f"{min(sizes):g} GiB" if sizes else "unknown VRAM"
