"""``harness plan --gpus 8x80 [--shard i/n]``: the schedule a packed run would follow, before running it.

Selection is pytest's own (``-m``, ``-k``, ``--max-vram-gib`` pass through to a ``--collect-only`` of the gate
module), so the plan lists exactly the cases a run would; the schedule is the scheduler's decisions replayed on
predicted durations (``scheduler.simulate``), against sequential and against a lower bound.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.gpu.demand import demand_of, load_durations
from harness.gpu.scheduler import Demand, Policy, Schedule, shard
from harness.profiles import Case, default_profile_dir, load_profiles

NODE_RE = re.compile(r"::test_mm_gate\[([^\]]+)\]\s*$")


class PlanError(RuntimeError):
    """Selection failed (a pytest usage error, a broken profile): the message says why."""


def option_value(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name X`` / ``--name=X`` among pass-through pytest args."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def collect_case_ids(pytest_cmd: Sequence[str]) -> list[str]:
    """The case ids pytest selects with these args (``--collect-only -q`` of the gate module)."""
    proc = subprocess.run([*pytest_cmd, "--collect-only", "-q"], capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 5):
        raise PlanError(
            f"case selection failed (pytest exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return [m.group(1) for line in proc.stdout.splitlines() if (m := NODE_RE.search(line))]


def selected_cases(backend: str, ids: Sequence[str], pytest_args: Sequence[str]) -> list[Case]:
    directory = option_value(pytest_args, "--harness-profile-dir")
    by_id = {c.id: c for c in load_profiles(Path(directory) if directory else default_profile_dir(), backend)}
    return [by_id[i] for i in ids if i in by_id]


@dataclass(frozen=True)
class Selection:
    cases: list[Case]
    demands: list[Demand]
    shard_note: str = ""


def select(
    backend: str,
    pytest_cmd: Sequence[str],
    pytest_args: Sequence[str],
    reports_root: Path,
    shard_of: tuple[int, int] | None = None,
) -> Selection:
    """Cases pytest selects, their demands (durations from earlier reports), restricted to one shard."""
    cases = selected_cases(backend, collect_case_ids(pytest_cmd), pytest_args)
    durations = load_durations(reports_root)
    demands = [demand_of(c, durations) for c in cases]
    note = ""
    if shard_of is not None:
        i, n = shard_of
        mine = {d.case_id for d in shard(demands, n)[i - 1]}
        note = f"shard {i}/{n}: {len(mine)} of {len(demands)} case(s)"
        cases = [c for c in cases if c.id in mine]
        demands = [d for d in demands if d.case_id in mine]
    return Selection(cases, demands, note)


def format_schedule(schedule: Schedule, demands: Sequence[Demand], policy: Policy, title: str) -> str:
    by_id = {d.case_id: d for d in demands}
    cap = ", ".join(f"{c:g}" for c in schedule.capacities_gib)
    cpu = "unlimited" if policy.cpu_budget == float("inf") else f"{policy.cpu_budget:g}"
    lines = [
        f"{title}: {len(schedule.items)} case(s) on {len(schedule.capacities_gib)} GPU(s) of [{cap}] GiB; "
        f"CPU budget {cpu}; stagger {policy.stagger_s:g} s; {policy.share_margin:.0%} kept free on shared cards",
        f"  {'start s':>8} {'end s':>8}  {'gpus':<8} {'GiB':>6} {'dur s':>7}  {'from':<9} case",
    ]
    for s in schedule.items:
        d = by_id[s.case_id]
        gpus = ",".join(map(str, s.gpus)) or "-"
        gib = "whole" if d.exclusive else f"{s.gib:g}"
        lines.append(
            f"  {s.start_s:8.1f} {s.end_s:8.1f}  {gpus:<8} {gib:>6} {d.duration_s:7.1f}  "
            f"{d.duration_from:<9} {s.case_id}"
        )
    for reason in schedule.refused.values():
        lines.append(f"  REFUSED {reason}")
    lines.append(
        f"predicted makespan {schedule.makespan_s:.1f} s; sequential {schedule.sequential_s:.1f} s "
        f"(speed-up {schedule.speedup:.2f}x); lower bound {schedule.lower_bound_s:.1f} s "
        f"(makespan / lower bound = {schedule.vs_lower_bound:.2f}; bound from {bound_name(schedule)}; "
        f"plain bound {schedule.naive_lower_bound_s:.1f} s)"
    )
    lines.append(f"dispatch rule: {schedule.rule.name} (best of {schedule.evaluations} replayed schedule(s))")
    return "\n".join(lines)


def bound_name(schedule: Schedule) -> str:
    return schedule.bound.binding if schedule.bound else "longest case"


def format_shard(selection: Selection) -> str:
    lines = [f"harness plan: {selection.shard_note}"]
    total = 0.0
    for d in selection.demands:
        total += d.duration_s
        lines.append(f"  {d.duration_s:7.1f} s ({d.duration_from})  {d.case_id}")
    lines.append(f"estimated sequential time of this shard: {total:.1f} s")
    return "\n".join(lines)


SIM_STAGGER_S = 0.5  # simulated engines have no start-up race; a short stagger still spreads the boots


def policy_from(
    backend: str, cpus: float | None, stagger_s: float | None, share_margin: float | None, prog: str
) -> Policy:
    """The packing policy from CLI values, each checked with its flag named; CPU defaults to the cgroup quota,
    the stagger to Dynamo's 10 s for real engines."""
    from harness.gpu.demand import cpu_budget

    if cpus is not None and cpus <= 0:
        raise ValueError(f"{prog}: --cpus must be positive, got {cpus:g}")
    if stagger_s is not None and stagger_s < 0:
        raise ValueError(f"{prog}: --stagger must be >= 0 seconds, got {stagger_s:g}")
    if share_margin is not None and not 0 <= share_margin < 1:
        raise ValueError(f"{prog}: --share-margin must be in [0, 1), got {share_margin:g}")
    default = Policy()
    return Policy(
        share_margin=default.share_margin if share_margin is None else share_margin,
        stagger_s=(SIM_STAGGER_S if backend == "sim" else default.stagger_s) if stagger_s is None else stagger_s,
        cpu_budget=cpu_budget() if cpus is None else cpus,
    )


def main_plan(
    *,
    backend: str,
    gpus: str | None,
    shard_text: str | None,
    policy: Policy,
    pytest_cmd: Sequence[str],
    pytest_args: Sequence[str],
    reports_root: Path,
) -> int:
    """``harness plan`` with ``--gpus`` and/or ``--shard``; prints the schedule (or the shard) and returns 0."""
    from harness.gpu.devices import parse_gpu_spec
    from harness.gpu.scheduler import parse_shard
    from harness.gpu.scheduler import plan as best_plan

    spec = parse_gpu_spec(gpus) if gpus else None
    shard_of = parse_shard(shard_text) if shard_text else None
    sel = select(backend, pytest_cmd, pytest_args, reports_root, shard_of)
    if spec is None:
        print(format_shard(sel))
        return 0
    schedule = best_plan(sel.demands, spec.capacities_gib, policy)
    title = f"harness plan ({sel.shard_note})" if sel.shard_note else "harness plan"
    print(format_schedule(schedule, sel.demands, policy, title))
    return 0
