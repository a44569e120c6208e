"""``harness vram``'s decisions (bisection, recommendation, drift) with a fake trial runner, and the GPU report."""

from __future__ import annotations

import json
from pathlib import Path

from harness.gpu.profiler import MIB, Trial, bisect_next, profile, recommend, verdict_ok, with_kv_cap
from harness.profiles import Case, ModelProfile, Topology
from harness.report.gpu import gpu_section, svg_timeline

GIB = 1024**3
CASE = Case(
    ModelProfile("Qwen/Qwen3-VL-2B-Instruct", "qwen3-vl-2b"),
    Topology("agg", "agg.sh", profiled_vram_gib=18.7, requested_kv_cache_bytes=4 * GIB),
)


def test_recommend_rounds_up() -> None:
    r = recommend(int(6.36 * GIB), int(0.898 * GIB))
    assert r.profiled_vram_gib == 7.0  # 6.36 x 1.1 = 6.996 -> 7.0
    assert r.requested_kv_cache_bytes % MIB == 0 and r.requested_kv_cache_bytes >= int(1.796 * GIB)
    assert (
        r.paste_line()
        == f'overrides={{"profiled_vram_gib": 7, "requested_kv_cache_bytes": {r.requested_kv_cache_bytes}}}'
    )


def test_bisect_next() -> None:
    assert bisect_next(0, 4 * GIB, 64 * MIB) == 2 * GIB
    assert bisect_next(GIB, GIB + 32 * MIB, 64 * MIB) is None


def test_verdict_ok_for_cases_and_controls() -> None:
    control = Case(CASE.model, Topology("kv_text", "agg_router.sh", expect="fail"))
    assert verdict_ok(CASE, True, set()) and not verdict_ok(CASE, False, {"routing"})
    assert verdict_ok(control, False, {"routing"}) and not verdict_ok(control, False, {"health", "routing"})
    assert not verdict_ok(control, True, set())


def test_profile_bisects_to_the_smallest_passing_cap_and_flags_drift() -> None:
    """The fake engine needs 0.9 GiB of KV to start; its peak is 4 GiB of weights + 1.2 x the KV cap."""
    tried: list[int] = []

    def trial(case: Case, kv: int) -> Trial:
        assert case is CASE
        tried.append(kv)
        ok = kv >= int(0.9 * GIB)
        return Trial(kv, ok, int(4 * GIB + 1.2 * kv) if ok else 0, 20, 20.0)

    p = profile(CASE, trial, start_kv_bytes=4 * GIB, max_trials=12, tolerance=16 * MIB)
    assert tried[0] == 4 * GIB
    assert p.min_passing_kv_bytes is not None and 0.9 * GIB <= p.min_passing_kv_bytes <= 0.9 * GIB + 16 * MIB
    assert p.final is not None and p.final.kv_bytes == p.recommendation.requested_kv_cache_bytes  # type: ignore[union-attr]
    assert p.final.passed
    assert p.recommendation is not None and p.recommendation.profiled_vram_gib < 18.7
    assert p.drift is not None and p.drift.startswith("under")  # 18.7 GiB typed, ~6.4 GiB measured


def test_profile_of_a_case_failing_at_its_own_cap_recommends_nothing() -> None:
    p = profile(
        CASE, lambda c, kv: Trial(kv, False, 0, 3, 20.0, "health"), start_kv_bytes=GIB, max_trials=5, tolerance=MIB
    )
    assert len(p.trials) == 1 and p.recommendation is None


def test_with_kv_cap_keeps_other_overrides() -> None:
    c = Case(CASE.model, CASE.topology, overrides={"timeout_s": 5.0})
    assert with_kv_cap(c, 123).effective.requested_kv_cache_bytes == 123
    assert with_kv_cap(c, 123).effective.timeout_s == 5.0


def test_gpu_report_section_and_plot(tmp_path: Path) -> None:
    packing = {
        "source": "simulated",
        "gpus": [{"index": 0, "capacity_gib": 80.0}, {"index": 1, "capacity_gib": 80.0}],
        "placements": [
            {
                "case": "a",
                "gpus": [0],
                "reserved_gib": 16.0,
                "start_s": 0.0,
                "end_s": 4.0,
                "wall_s": 4.0,
                "estimated_s": 5.0,
                "attempts": 1,
                "rc": 0,
            },
            {
                "case": "b",
                "gpus": [0],
                "reserved_gib": 8.0,
                "start_s": 0.5,
                "end_s": 3.0,
                "wall_s": 2.5,
                "estimated_s": 3.0,
                "attempts": 2,
                "rc": 0,
            },
        ],
        "refused": {"c": "c: has profiled_vram_gib=5 but no requested_kv_cache_bytes"},
        "makespan_s": 4.0,
        "sequential_s": 6.5,
        "speedup": 1.625,
        "predicted": {"makespan_s": 5.0, "lower_bound_s": 5.0},
        "timeline": {
            "t": [0.0, 1.0, 2.0],
            "used_gib": {"0": [0.0, 20.0, 9.0], "1": [0.0, 0.0, 0.0]},
            "total_gib": {"0": 80.0, "1": 80.0},
        },
    }
    (tmp_path / "packing.json").write_text(json.dumps(packing))
    records = [
        {
            "case": "a",
            "vram": {
                "peak_gib": 19.1,
                "per_gpu_peak_gib": {"0": 19.1},
                "profiled_vram_gib": 16.0,
                "drift": "over: measured peak 19.10 GiB > profiled_vram_gib 16",
                "samples": 40,
                "hz": 10.5,
            },
        }
    ]
    text = gpu_section(tmp_path, records)
    assert "## Measured VRAM" in text and "over: measured peak 19.10" in text
    assert "## GPU packing" in text and "speed-up **1.625x**" in text and "refused: c:" in text
    svg = (tmp_path / "gpu_memory.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and svg.count("<rect") == 2
    assert gpu_section(tmp_path / "nothing", []) == ""
    assert "<svg" in svg_timeline({}, [])
