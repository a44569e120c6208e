"""The thin I/O shell around the scheduler: run selected cases concurrently across a node's GPUs.

Each case runs in its own pytest subprocess (its own session, so its whole tree is ended with it) with
``CUDA_VISIBLE_DEVICES`` set to its GPUs and its KV cap in the launch contract. A background sampler feeds the
measured free memory into every decision and records the node's memory over time; ``packing.json`` in the run
directory keeps placements, retries, the timeline and the speed-up for the report. The decisions themselves
are ``harness.gpu.scheduler.plan_step``; nothing here decides.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.gpu.devices import GIB, GpuSnapshot, GpuSource, GpuSpec, GpuUnavailable, SimulatedGpus
from harness.gpu.sampler import BackgroundSampler
from harness.gpu.scheduler import (
    Demand,
    GpuState,
    Placement,
    Policy,
    Running,
    Schedule,
    plan,
    plan_step,
    refusal,
    should_retry,
)
from harness.gpu.simulated import ENV_DIR, SimGpuRegistry
from harness.profiles import Case
from harness.stack.processes import ManagedProcess, spawn, tail

GATE_NODE = "test_mm_routing.py::test_mm_gate[{}]"
NO_PROGRESS_S = 30.0  # nothing runs and nothing fits for this long: the rest never will
CaseCommand = Callable[[str, Path], list[str]]  # (case id, junit path) -> the case's pytest command line


@dataclass
class Attempt:
    gpus: tuple[int, ...]
    start_s: float
    end_s: float | None = None
    rc: int | None = None
    startup_failed: bool = False


@dataclass
class CaseRun:
    case: Case
    demand: Demand
    attempts: list[Attempt] = field(default_factory=list)
    proc: ManagedProcess | None = None
    placement: Placement | None = None
    deadline_s: float = 0.0

    @property
    def last(self) -> Attempt:
        return self.attempts[-1]


def strip_xdist(args: Sequence[str]) -> list[str]:
    """Packing replaces pytest-xdist: ``-n N`` in the pass-through args would fork inside every case."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("-n", "--numprocesses", "--dist"):
            skip = True
            continue
        if (a.startswith("-n") and a[2:].isdigit()) or a.startswith(("--numprocesses=", "--dist=")):
            continue
        out.append(a)
    return out


def gpu_states(
    capacities_gib: Sequence[float], runs: Sequence[CaseRun], snapshot: Sequence[GpuSnapshot] | None, now_s: float
) -> list[GpuState]:
    """The scheduler's view: reservations of the running cases plus the sampler's measured free memory."""
    free = {s.index: s.free_bytes / GIB for s in snapshot or ()}
    states = []
    for i, cap in enumerate(capacities_gib):
        running = []
        last: float | None = None
        for r in runs:
            if r.proc is not None and r.placement is not None and i in r.placement.gpus:
                start = r.last.start_s
                running.append(
                    Running(r.case.id, r.placement.gib, start, start + r.demand.duration_s, r.placement.exclusive)
                )
                last = start if last is None else max(last, start)
        states.append(GpuState(i, cap, tuple(running), free.get(i), last))
    return states


def case_env(placement: Placement, demand: Demand, extra: dict[str, str]) -> dict[str, str]:
    """The launch contract's GPU part: which devices (in NVML's PCI order) and the KV cap."""
    env = {**os.environ, **extra}
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, placement.gpus))
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA indices = NVML indices = what the sampler reads
    if demand.kv_cache_bytes:
        env["HARNESS_KV_CACHE_BYTES"] = str(demand.kv_cache_bytes)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _read_record(run_dir: Path, case_id: str) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / "cases" / f"{case_id}.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _refused_record(case: Case, reason: str) -> dict[str, Any]:
    return {
        "case": case.id,
        "model": case.model.model,
        "topology": case.topology.name,
        "expect": case.effective.expect,
        "marks": case.mark_names,
        "outcome": "refused",
        "error": reason,
    }


def merge_junit(run_dir: Path) -> None:
    """One junit.xml for the run from each case's own file (the last attempt of each case)."""
    suite = ET.Element("testsuite", name="mmharness-packed")
    counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for path in sorted((run_dir / "junit").glob("*.xml")):
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            continue
        for s in [root] if root.tag == "testsuite" else root.findall("testsuite"):
            for k in counts:
                counts[k] += int(s.get(k, 0))
            suite.extend(s.findall("testcase"))
    for k, v in counts.items():
        suite.set(k, str(v))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(run_dir / "junit.xml", encoding="unicode")


@contextmanager
def simulated_node(spec: GpuSpec) -> Iterator[tuple[SimulatedGpus, dict[str, str]]]:
    """Simulated GPUs private to this run (unless ``HARNESS_SIM_GPU_DIR`` names shared ones): the source and the
    env every case needs to publish into and read from the same registry."""
    given = os.environ.get(ENV_DIR)
    root = Path(given) if given else Path(tempfile.mkdtemp(prefix="mmharness-simgpu-"))
    gpus = SimulatedGpus(spec, SimGpuRegistry(root))
    gpus.publish_capacities()
    try:
        yield gpus, {ENV_DIR: str(root), "HARNESS_SIM_GPUS": str(spec)}
    finally:
        if not given:
            shutil.rmtree(root, ignore_errors=True)


def run_packed(
    cases: Sequence[Case],
    demands: Sequence[Demand],
    *,
    run_dir: Path,
    source: GpuSource,
    case_cmd: CaseCommand,
    policy: Policy,
    env: dict[str, str] | None = None,
    poll_s: float = 0.1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every case packed; write ``packing.json`` and the merged ``junit.xml``; return the packing data."""
    (run_dir / "cases").mkdir(parents=True, exist_ok=True)
    (run_dir / "junit").mkdir(exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    sampler = BackgroundSampler(source, interval_s=poll_s).start()
    if sampler.latest is None:
        sampler.stop()
        raise GpuUnavailable(f"cannot read the node's GPUs: {sampler.error}")
    capacities = [s.total_bytes / GIB for s in sampler.latest]
    by_id = {d.case_id: d for d in demands}
    runs = {c.id: CaseRun(c, by_id[c.id]) for c in cases}
    refused: dict[str, str] = {}
    for r in runs.values():
        reason = refusal(r.demand, capacities)
        if reason:
            refused[r.case.id] = reason
            (run_dir / "cases" / f"{r.case.id}.json").write_text(json.dumps(_refused_record(r.case, reason), indent=2))
            log(f"refused {reason}")
    pending = [r for r in runs.values() if r.case.id not in refused]
    # The dispatch rule with the shortest predicted makespan (``scheduler.plan``); the run follows its priority,
    # while every start is still admitted live against budgets, measured memory, stagger and the CPU budget.
    planned = plan([r.demand for r in pending], capacities, policy)
    log(f"dispatch rule: {planned.rule.name} (predicted makespan {planned.makespan_s:.1f} s)")
    active: list[CaseRun] = []
    finished: list[CaseRun] = []
    t0 = time.monotonic()
    last_progress = t0
    try:
        while pending or active:
            now = time.monotonic() - t0
            for r in [r for r in active if r.proc is not None and (r.proc.poll() is not None or now > r.deadline_s)]:
                assert r.proc is not None
                timed_out = r.proc.poll() is None
                rc = r.proc.terminate(grace_s=5.0)
                record = _read_record(run_dir, r.case.id)
                a = r.last
                a.end_s, a.rc = time.monotonic() - t0, (124 if timed_out else rc)
                a.startup_failed = bool(record.get("error")) or not record
                text = f"{record.get('error', '')}\n{tail(r.proc.log_path, 80)}"
                r.proc = None
                active.remove(r)
                last_progress = time.monotonic()
                if a.rc != 0 and not timed_out and should_retry(len(r.attempts), a.startup_failed, text, policy):
                    log(f"retry {r.case.id}: start-up failed with a transient marker (attempt {len(r.attempts)})")
                    pending.append(r)
                else:
                    finished.append(r)
                    log(f"done  {r.case.id} rc={a.rc} in {a.end_s - a.start_s:.1f} s")
            if not pending:
                if active:
                    time.sleep(poll_s)
                continue
            states = gpu_states(capacities, active, sampler.latest, now)
            cpus = sum(r.demand.cpus for r in active)
            step = plan_step([r.demand for r in pending], states, now, policy, cpus, planned.rule)
            for p in step.starts:
                r = runs[p.case_id]
                pending.remove(r)
                r.placement = p
                junit = run_dir / "junit" / f"{r.case.id}.xml"
                log_path = run_dir / "logs" / f"{r.case.id}.pytest.log"
                r.proc = spawn(
                    f"{r.case.id}/pytest", case_cmd(r.case.id, junit), log_path, env=case_env(p, r.demand, env or {})
                )
                r.attempts.append(Attempt(p.gpus, time.monotonic() - t0))
                r.deadline_s = r.last.start_s + 2 * r.case.effective.timeout_s + 120.0
                active.append(r)
                last_progress = time.monotonic()
                log(f"start {r.case.id} on gpus={','.join(map(str, p.gpus)) or '-'} reserving {p.gib:g} GiB")
            if not active and not step.starts and time.monotonic() - last_progress > NO_PROGRESS_S:
                for r in pending:
                    reason = f"{r.case.id}: never fits ({step.blocked.get(r.case.id, 'blocked')})"
                    refused[r.case.id] = reason
                    record = _refused_record(r.case, reason)
                    (run_dir / "cases" / f"{r.case.id}.json").write_text(json.dumps(record, indent=2))
                    log(f"refused {reason}")
                pending = []
            if not step.starts:
                time.sleep(poll_s)
    finally:
        for r in active:
            if r.proc is not None:
                r.proc.terminate(grace_s=5.0)
        sampler.stop()
    makespan = time.monotonic() - t0
    merge_junit(run_dir)
    data = packing_data(runs, refused, capacities, policy, sampler, makespan, source.name, planned)
    (run_dir / "packing.json").write_text(json.dumps(data, indent=2))
    return data


def packing_data(
    runs: dict[str, CaseRun],
    refused: dict[str, str],
    capacities: Sequence[float],
    policy: Policy,
    sampler: BackgroundSampler,
    makespan_s: float,
    source_name: str,
    predicted: Schedule,
) -> dict[str, Any]:
    placements: list[dict[str, Any]] = []
    for r in runs.values():
        if not r.attempts or r.placement is None:
            continue
        a = r.last
        end = a.end_s if a.end_s is not None else makespan_s
        placements.append(
            {
                "case": r.case.id,
                "gpus": list(a.gpus),
                "reserved_gib": r.placement.gib,
                "start_s": round(a.start_s, 3),
                "end_s": round(end, 3),
                "wall_s": round(end - a.start_s, 3),
                "rc": a.rc,
                "attempts": len(r.attempts),
                "earlier_attempts": [asdict(x) for x in r.attempts[:-1]],
                "estimated_s": r.demand.duration_s,
            }
        )
    placements.sort(key=lambda p: (p["start_s"], p["case"]))
    sequential = sum(p["wall_s"] for p in placements)
    return {
        "source": source_name,
        "gpus": [{"index": i, "capacity_gib": c} for i, c in enumerate(capacities)],
        "policy": {k: v for k, v in asdict(policy).items() if k != "transient_markers"},
        "placements": placements,
        "refused": refused,
        "makespan_s": round(makespan_s, 3),
        "sequential_s": round(sequential, 3),
        "speedup": round(sequential / makespan_s, 3) if makespan_s else None,
        "predicted": {
            "makespan_s": round(predicted.makespan_s, 3),
            "sequential_s": round(predicted.sequential_s, 3),
            "lower_bound_s": round(predicted.lower_bound_s, 3),
            "naive_lower_bound_s": round(predicted.naive_lower_bound_s, 3),
            "bound": predicted.bound.binding if predicted.bound else None,
            "rule": predicted.rule.name,
        },
        "timeline": sampler.timeline.to_json(),
        "sampler_error": sampler.error,
    }


def check_packing_args(
    backend: str, gpus: str | None, shard_text: str | None
) -> tuple[GpuSpec | None, tuple[int, int] | None]:
    """Validate ``--gpus``/``--shard`` before anything starts (errors name the flag)."""
    from harness.gpu.devices import parse_gpu_spec
    from harness.gpu.scheduler import parse_shard

    if gpus and backend != "sim":
        raise ValueError(
            f"--gpus simulates GPUs; with --backend {backend} the node's GPUs are read through NVML (use --pack)"
        )
    return (parse_gpu_spec(gpus) if gpus else None), (parse_shard(shard_text) if shard_text else None)


def main_run(
    *,
    backend: str,
    spec: GpuSpec | None,
    shard_of: tuple[int, int] | None,
    policy: Policy,
    pytest_cmd: Sequence[str],
    pytest_args: Sequence[str],
    case_cmd: CaseCommand,
    run_dir: Path,
    reports_root: Path,
    log: Callable[[str], None] = print,
) -> int:
    """``harness run --gpus 2x80`` / ``--pack`` / ``--shard i/n``: select, pack, run; pytest-like exit code."""
    from harness.gpu.devices import sim_spec_from_env
    from harness.gpu.plan import select

    sel = select(backend, pytest_cmd, pytest_args, reports_root, shard_of)
    if sel.shard_note:
        log(f"harness run: {sel.shard_note}")
    if not sel.cases:
        return 5
    try:
        if backend == "sim":
            with simulated_node(spec or sim_spec_from_env()) as (gpus, env):
                data = run_packed(
                    sel.cases,
                    sel.demands,
                    run_dir=run_dir,
                    source=gpus,
                    case_cmd=case_cmd,
                    policy=policy,
                    env=env,
                    log=log,
                )
        else:
            from harness.gpu.nvml import NvmlGpus

            nvml = NvmlGpus()
            try:
                data = run_packed(
                    sel.cases, sel.demands, run_dir=run_dir, source=nvml, case_cmd=case_cmd, policy=policy, log=log
                )
            finally:
                nvml.close()
    except KeyboardInterrupt:
        log("harness run: interrupted; every case's process group was ended")
        return 130
    log(
        f"packed: makespan {data['makespan_s']:.1f} s vs {data['sequential_s']:.1f} s of case time run one by one "
        f"(speed-up {data['speedup'] or 0:.2f}x); predicted {data['predicted']['makespan_s']:.1f} s, "
        f"lower bound {data['predicted']['lower_bound_s']:.1f} s"
    )
    ok = not data["refused"] and all(p["rc"] == 0 for p in data["placements"])
    return 0 if ok else 1
