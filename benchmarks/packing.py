"""Packing benchmark: recorded inventories of 40 cases on 8 simulated 80 GiB GPUs.

For the realistic inventory (``data/inventory_40.json``) and the memory-dense one (``data/inventory_40_dense.json``)
it prints the planner's predicted makespan against the lower bound (``harness.gpu.bounds``: a true bound for
any schedule under the same rules, margin and gangs included; target: within 1.10x), against the issue's plain
bound (the longest case or memory-seconds / capacity, which ignores the margin, so readers can compare with
earlier figures), against sequential, and against one case per GPU (what Dynamo's CI did before packing: ~570 s
of a 1,764 s run idle, ai-dynamo/dynamo PR #10126). The figures are the scheduler's own decisions
(``plan_step``) replayed on the recorded durations; they are printed, never asserted.

    python benchmarks/packing.py [--inventory FILE ...] [--gpus 8x80] [--stagger 10] [--share-margin 0.15]
                                 [--evaluations 200]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

from harness.gpu.demand import load_inventory
from harness.gpu.devices import parse_gpu_spec
from harness.gpu.scheduler import Demand, Policy, plan, simulate

DATA = Path(__file__).resolve().parent / "data"
INVENTORIES = (DATA / "inventory_40.json", DATA / "inventory_40_dense.json")
TARGET = 1.10


def one_per_gpu(demands: list[Demand]) -> list[Demand]:
    """The unpacked baseline: every GPU case takes whole cards (as if its VRAM were unknown)."""
    return [d if d.filler else replace(d, vram_gib=None, kv_cache_bytes=None) for d in demands]


def report(path: Path, shape: str, policy: Policy, evaluations: int, detail: bool) -> float:
    demands = load_inventory(path)
    caps = parse_gpu_spec(shape).capacities_gib
    t0 = time.perf_counter()
    best = plan(demands, caps, policy, evaluations=evaluations)
    plan_s = time.perf_counter() - t0
    default = simulate(demands, caps, policy)
    if not detail:
        print(
            f"    {path.stem:22s} on {shape:5s}: makespan {best.makespan_s:7.1f} s, "
            f"bound {best.lower_bound_s:7.1f} s ({best.vs_lower_bound:.3f}x), "
            f"plain bound {best.naive_lower_bound_s:7.1f} s ({best.vs_naive_bound:.3f}x); "
            f"longest first alone {default.makespan_s:7.1f} s ({default.makespan_s / best.lower_bound_s:.3f}x)"
        )
        return best.vs_lower_bound
    unpacked = simulate(one_per_gpu(demands), caps, policy)
    no_margin = simulate(demands, caps, replace(policy, share_margin=0.0, stagger_s=0.0))
    slots = sum(d.gpus for d in demands)
    bound = best.bound.binding if best.bound else "-"
    print(f"{path.name}: {len(demands)} cases ({slots} GPU slots, {sum(d.filler for d in demands)} fillers) on {shape}")
    print(f"  makespan            {best.makespan_s:8.1f} s   dispatch rule: {best.rule.name}")
    print(f"  lower bound         {best.lower_bound_s:8.1f} s   makespan / bound       = {best.vs_lower_bound:.3f}")
    print(f"                                 from: {bound}")
    plain = best.naive_lower_bound_s
    print(f"  plain bound         {plain:8.1f} s   makespan / plain bound = {best.vs_naive_bound:.3f}")
    print(f"  sequential          {best.sequential_s:8.1f} s   speed-up {best.speedup:.2f}x")
    print(
        f"  longest first alone {default.makespan_s:8.1f} s   (the default rule without the planner: "
        f"{default.makespan_s / best.lower_bound_s:.3f}x the bound)"
    )
    saved = unpacked.makespan_s - best.makespan_s
    print(f"  one per GPU         {unpacked.makespan_s:8.1f} s   packing saves {saved:.1f} s")
    print(f"  no margin/stagger   {no_margin.makespan_s:8.1f} s   (longest first; what the safety rules cost)")
    print(f"  refused {len(best.refused)}; planning: {best.evaluations} replays in {plan_s:.2f} s")
    verdict = "met" if best.vs_lower_bound <= TARGET else "NOT met"
    print(f"  target makespan / lower bound <= {TARGET:.2f}: {verdict}")
    return best.vs_lower_bound


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inventory", type=Path, action="append", default=None, help="repeatable; default: both")
    p.add_argument("--gpus", default="8x80")
    p.add_argument("--stagger", type=float, default=10.0)
    p.add_argument("--share-margin", type=float, default=0.15)
    p.add_argument("--evaluations", type=int, default=200, help="schedules the planner may replay per inventory")
    args = p.parse_args(argv)
    try:
        spec = parse_gpu_spec(args.gpus)
    except ValueError as exc:
        print(f"packing benchmark: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.share_margin < 1 or args.stagger < 0 or args.evaluations < 1:
        print("packing benchmark: --share-margin in [0, 1), --stagger >= 0, --evaluations >= 1", file=sys.stderr)
        return 2
    policy = Policy(share_margin=args.share_margin, stagger_s=args.stagger, cpu_budget=math.inf)
    paths = args.inventory or list(INVENTORIES)
    print(f"planner: {policy.share_margin:.0%} margin on shared cards, {policy.stagger_s:g} s stagger per GPU")
    for path in paths:
        report(path, str(spec), policy, args.evaluations, detail=True)
    print("  other node shapes (same rules; fewer cards make memory, not the longest case, bind):")
    for path in paths:
        for shape in ("2x80", "4x80", str(spec)):
            report(path, shape, policy, args.evaluations, detail=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
