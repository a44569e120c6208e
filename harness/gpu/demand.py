"""What a case asks of a node (GPUs, VRAM, KV cap, CPU, duration) and where those numbers come from.

Durations come from earlier runs' reports (``reports/*/packing.json`` wall times, else the per-case records'
phase timings), else from an estimate by backend and worker count, so a first run still packs and later runs
pack better. The CPU budget is the cgroup quota (what a CI container is really given), not the host's cores.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.gpu.scheduler import Demand
from harness.profiles import Case

PYTEST_OVERHEAD_S = 2.0  # a case's own pytest process: interpreter, plugin, collection


def gpus_needed(case: Case) -> int:
    """Simulated workers all account on the case's one (simulated) GPU; real vLLM workers take one GPU each
    unless ``SINGLE_GPU=1`` puts them on one card; a model's own ``gpus`` (tensor parallel) multiplies."""
    t = case.effective
    if t.backend == "sim" or t.env.get("SINGLE_GPU") == "1":
        return case.model.gpus
    return case.model.gpus * t.workers


def estimate_duration_s(case: Case) -> float:
    """A first guess until a run measures the case: boot per worker, the gate, teardown."""
    t = case.effective
    if t.backend == "sim":
        return PYTEST_OVERHEAD_S + 4.0 + 1.5 * t.workers
    return PYTEST_OVERHEAD_S + 90.0 + 30.0 * t.workers  # model load + start-up profiling per engine


def estimate_cpus(case: Case) -> float:
    """Simulated workers mostly sleep: the gate and the proxy take about a core. A vLLM engine keeps one core
    busy in its scheduler loop."""
    t = case.effective
    return 1.0 if t.backend == "sim" else 1.0 + t.workers


def demand_of(case: Case, durations: Mapping[str, float] | None = None) -> Demand:
    t = case.effective
    known = (durations or {}).get(case.id)
    return Demand(
        case_id=case.id,
        duration_s=known if known is not None else estimate_duration_s(case),
        gpus=gpus_needed(case),
        vram_gib=t.profiled_vram_gib,
        kv_cache_bytes=t.requested_kv_cache_bytes,
        cpus=estimate_cpus(case),
        duration_from="report" if known is not None else "estimate",
    )


def _record_duration(record: Mapping[str, Any]) -> float | None:
    phases = record.get("phases") or {}
    parts = [phases.get(k) for k in ("boot_total", "checks", "teardown")] + [record.get("duration_s")]
    nums = [float(p) for p in parts if isinstance(p, int | float)]
    return sum(nums) + PYTEST_OVERHEAD_S if nums and record.get("outcome") else None


def load_durations(reports_root: Path) -> dict[str, float]:
    """Measured case durations, the newest run winning: packed runs' wall times, else record phase sums."""
    out: dict[str, float] = {}
    if not reports_root.is_dir():
        return out
    runs = [p for p in reports_root.iterdir() if p.is_dir() and not p.is_symlink()]
    for run in sorted(runs, key=lambda p: p.stat().st_mtime):
        for path in sorted((run / "cases").glob("*.json")):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            d = _record_duration(rec) if isinstance(rec, dict) else None
            if d is not None and isinstance(rec.get("case"), str):
                out[rec["case"]] = round(d, 3)
        try:
            packing = json.loads((run / "packing.json").read_text())
        except (OSError, ValueError):
            continue
        for item in packing.get("placements", []) if isinstance(packing, dict) else []:
            if isinstance(item, dict) and item.get("wall_s") and item.get("rc") == 0:
                out[str(item["case"])] = float(item["wall_s"])
    return out


def load_inventory(path: Path) -> list[Demand]:
    """A recorded inventory: ``{"cases": [{"case": id, "gpus": n, "vram_gib": x, "kv_cache_bytes": b,
    "duration_s": s, "cpus": c}, ...]}``."""
    data = json.loads(Path(path).read_text())
    rows: Iterable[dict[str, Any]] = data["cases"] if isinstance(data, dict) else data
    return [
        Demand(
            case_id=str(r["case"]),
            duration_s=float(r["duration_s"]),
            gpus=int(r.get("gpus", 1)),
            vram_gib=None if r.get("vram_gib") is None else float(r["vram_gib"]),
            kv_cache_bytes=r.get("kv_cache_bytes"),
            cpus=float(r.get("cpus", 1.0)),
            duration_from="inventory",
        )
        for r in rows
    ]


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` (``"200000 100000"`` = 2 CPUs; ``"max 100000"`` = no quota)."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_budget(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float:
    """CPUs this process may use: the cgroup quota (v2, else v1) capped by the CPUs it is pinned to."""
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cpus = float(os.cpu_count() or 1)
    quota: float | None = None
    try:
        quota = parse_cpu_max((cgroup_root / "cpu.max").read_text())
    except OSError:
        try:
            q = float((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
            p = float((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
            quota = q / p if q > 0 and p > 0 else None
        except (OSError, ValueError):
            quota = None
    return max(1.0, min(cpus, quota if quota is not None else math.inf))
