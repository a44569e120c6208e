"""``harness vram CASE_ID``: measure a case's VRAM and recommend its ``profiled_vram_gib`` and KV cap.

The case runs through its own launch script and gate while a sampler reads its GPU memory at 20 Hz (at least
the issue's 10 Hz: an engine's start-up profiling peak is short). The KV-cache cap is then bisected down to the
smallest value whose run still gives the case's expected verdict (a working stack passes, a control is rejected
on a routing check), and the case runs once more at the recommended cap (minimum passing x 2, headroom for
longer prompts and concurrency) to measure the peak the profile should carry (x 1.1). ``profiled_vram_gib`` was
a hand-typed constant before this; stale marks are what made Dynamo's packing waste time (PR #12842).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from harness.gate.image_server import ImageServer
from harness.gpu.devices import GIB, GpuSource
from harness.gpu.sampler import CaseVramMonitor, drift_of
from harness.profiles import Case

MIB = 1024**2
PROFILE_HZ = 20.0
PEAK_HEADROOM = 1.1  # profiled_vram_gib = measured peak x 1.1
KV_HEADROOM = 2.0  # requested_kv_cache_bytes = minimum passing x 2


@dataclass(frozen=True)
class Trial:
    kv_bytes: int
    passed: bool
    peak_bytes: int
    samples: int
    hz: float
    detail: str = ""


@dataclass(frozen=True)
class Recommendation:
    profiled_vram_gib: float
    requested_kv_cache_bytes: int

    def paste_line(self) -> str:
        return (
            f'overrides={{"profiled_vram_gib": {self.profiled_vram_gib:g}, '
            f'"requested_kv_cache_bytes": {self.requested_kv_cache_bytes}}}'
        )


def recommend(peak_bytes: int, min_passing_kv_bytes: int) -> Recommendation:
    """Peak x 1.1 rounded up to 0.1 GiB; minimum passing KV x 2 rounded up to a MiB."""
    gib = math.ceil(peak_bytes * PEAK_HEADROOM / GIB * 10 - 1e-9) / 10
    kv = math.ceil(min_passing_kv_bytes * KV_HEADROOM / MIB) * MIB
    return Recommendation(gib, kv)


def bisect_next(lo_fail: int, hi_pass: int, tolerance: int) -> int | None:
    """The next cap to try between a failing and a passing one (MiB-aligned); None when they are close enough."""
    if hi_pass - lo_fail <= max(tolerance, MIB):
        return None
    mid = (lo_fail + hi_pass) // 2 // MIB * MIB
    return mid if lo_fail < mid < hi_pass else None


def with_kv_cap(case: Case, kv_bytes: int) -> Case:
    return replace(case, overrides={**dict(case.overrides), "requested_kv_cache_bytes": kv_bytes})


def verdict_ok(case: Case, passed: bool, failed_kinds: set[str]) -> bool:
    """What "still passes" means: a working stack passes its gate; a control is still rejected for routing."""
    if "health" in failed_kinds:
        return False
    if case.is_control:
        return "routing" in failed_kinds
    return passed


TrialRunner = Callable[[Case, int], Trial]


def run_trial(
    case: Case,
    kv_bytes: int,
    *,
    source: GpuSource,
    log_dir: Path,
    images: ImageServer,
    extra_env: dict[str, str],
    visible: list[int] | None,
) -> Trial:
    """Boot the case at ``kv_bytes`` per worker, run its gate, measure its peak; a stack that does not come up
    is a failed trial (too small a cap is the usual reason)."""
    from harness.gate.scenario import run_gate
    from harness.stack.launch import LaunchError, launched

    trial_case = with_kv_cap(case, kv_bytes)
    monitor = CaseVramMonitor(source, visible, interval_s=1.0 / PROFILE_HZ).start()
    detail = ""
    ok = False
    try:
        with launched(trial_case, log_dir, extra_env=extra_env) as stack:
            monitor.attach(stack.proc.pid)
            result = run_gate(stack, images)
            ok = verdict_ok(case, result.passed, result.failed_kinds())
            detail = ", ".join(sorted(result.failed_kinds())) or "all checks pass"
    except LaunchError as exc:
        detail = str(exc).splitlines()[0][:200]
    finally:
        monitor.stop()
    r = monitor.result()
    return Trial(kv_bytes, ok, r.peak_bytes, r.samples, r.hz, detail)


@dataclass(frozen=True)
class Profile:
    case_id: str
    trials: tuple[Trial, ...]
    min_passing_kv_bytes: int | None
    final: Trial | None
    recommendation: Recommendation | None
    current_profiled_gib: float | None
    current_kv_bytes: int | None

    @property
    def drift(self) -> str | None:
        peak = self.final.peak_bytes if self.final and self.final.passed else None
        if peak is None and self.trials:
            peak = self.trials[0].peak_bytes
        return drift_of(peak / GIB, self.current_profiled_gib) if peak is not None else None


def profile(case: Case, trial: TrialRunner, *, start_kv_bytes: int, max_trials: int, tolerance: int) -> Profile:
    """Bisect the KV cap (pure orchestration: ``trial`` does the I/O), then measure at the recommended cap."""
    t = case.effective
    trials = [trial(case, start_kv_bytes)]
    if not trials[0].passed:
        return Profile(case.id, tuple(trials), None, None, None, t.profiled_vram_gib, t.requested_kv_cache_bytes)
    lo, hi = 0, start_kv_bytes
    while len(trials) < max_trials and (nxt := bisect_next(lo, hi, tolerance)) is not None:
        trials.append(trial(case, nxt))
        if trials[-1].passed:
            hi = nxt
        else:
            lo = nxt
    rec_kv = recommend(0, hi).requested_kv_cache_bytes
    final = trial(case, rec_kv)
    peak = final.peak_bytes if final.passed else max(x.peak_bytes for x in trials if x.passed)
    rec = recommend(peak, hi)
    return Profile(case.id, tuple(trials), hi, final, rec, t.profiled_vram_gib, t.requested_kv_cache_bytes)


def format_profile(p: Profile) -> str:
    lines = [f"harness vram {p.case_id}:"]
    for i, x in enumerate(p.trials, 1):
        lines.append(
            f"  trial {i}: KV cap {x.kv_bytes / GIB:6.3f} GiB  {'pass' if x.passed else 'FAIL'}  "
            f"peak {x.peak_bytes / GIB:6.2f} GiB  ({x.samples} samples, {x.hz:.0f} Hz; {x.detail})"
        )
    if p.recommendation is None or p.min_passing_kv_bytes is None:
        lines.append("  the case does not pass at its own KV cap: fix it before profiling (see the trial above)")
        return "\n".join(lines)
    if p.final is not None:
        x = p.final
        lines.append(
            f"  at the recommended cap {x.kv_bytes / GIB:.3f} GiB: {'pass' if x.passed else 'FAIL'}, "
            f"peak {x.peak_bytes / GIB:.2f} GiB ({x.samples} samples, {x.hz:.0f} Hz)"
        )
    lines.append(f"  smallest passing KV cap: {p.min_passing_kv_bytes / GIB:.3f} GiB per worker")
    lines.append(
        f"  current: profiled_vram_gib={p.current_profiled_gib}, requested_kv_cache_bytes={p.current_kv_bytes}"
    )
    if p.drift:
        lines.append(f"  drift: {p.drift}")
    lines.append("paste into the case in its profile file:")
    lines.append(f"    {p.recommendation.paste_line()}")
    return "\n".join(lines)


def main_vram(
    case: Case, *, log_dir: Path | None, max_trials: int, tolerance_mib: float, sim_gib: float = 80.0
) -> tuple[Profile, str]:
    """Profile ``case`` on this node (simulated GPUs for ``sim``, NVML otherwise); returns the profile and its text."""
    import os

    from harness.gate.payloads import make_lora_adapter
    from harness.gpu.devices import GpuSpec, visible_devices
    from harness.gpu.runner import simulated_node
    from harness.stack.spec import DEFAULT_ADAPTER, DEFAULT_KV_CACHE_BYTES

    logs = log_dir or Path(tempfile.mkdtemp(prefix=f"mmharness-vram-{case.id}-"))
    extra: dict[str, str] = {}
    if case.payload == "lora":
        adapters = logs / "adapters"
        make_lora_adapter(adapters, DEFAULT_ADAPTER, case.model.model)
        extra["HARNESS_ADAPTER_DIR"] = str(adapters)
    start = case.effective.requested_kv_cache_bytes or DEFAULT_KV_CACHE_BYTES
    visible = visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
    with ImageServer() as images:
        if case.effective.backend == "sim":
            with simulated_node(GpuSpec(1 + max(visible or [0]), sim_gib)) as (gpus, env):
                result = _profile_on(
                    case, gpus, logs, images, {**extra, **env}, visible, start, max_trials, tolerance_mib
                )
        else:
            from harness.gpu.nvml import NvmlGpus

            nvml = NvmlGpus()
            try:
                result = _profile_on(case, nvml, logs, images, extra, visible, start, max_trials, tolerance_mib)
            finally:
                nvml.close()
    return result, format_profile(result)


def _profile_on(
    case: Case,
    source: GpuSource,
    logs: Path,
    images: ImageServer,
    env: dict[str, str],
    visible: list[int] | None,
    start: int,
    max_trials: int,
    tolerance_mib: float,
) -> Profile:
    count = 0

    def trial(c: Case, kv: int) -> Trial:
        nonlocal count
        count += 1  # each run its own log directory: logs are appended, and readiness is read from them
        trial_logs = logs / f"trial{count}"
        x = run_trial(c, kv, source=source, log_dir=trial_logs, images=images, extra_env=env, visible=visible)
        print(
            f"  ... KV cap {kv / GIB:.3f} GiB: {'pass' if x.passed else 'FAIL'}, peak {x.peak_bytes / GIB:.2f} GiB",
            flush=True,
        )
        return x

    return profile(case, trial, start_kv_bytes=start, max_trials=max_trials, tolerance=int(tolerance_mib * MIB))
