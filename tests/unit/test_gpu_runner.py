"""The packed runner's pure parts and the CLI's handling of bad packing input (no processes started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import cli
from harness.gpu.demand import cpu_budget, demand_of, gpus_needed, load_durations, parse_cpu_max
from harness.gpu.devices import GIB, GpuSnapshot
from harness.gpu.runner import CaseRun, case_env, gpu_states, merge_junit, strip_xdist
from harness.gpu.scheduler import Demand, Placement
from harness.profiles import Case, ModelProfile, Topology

MODEL = ModelProfile("Qwen/Qwen3-VL-2B-Instruct", "qwen3-vl-2b")
SIM = Topology("agg_router", "agg_router.sh", workers=2, router="proxy", profiled_vram_gib=16.0)


def test_strip_xdist() -> None:
    assert strip_xdist(["-m", "nightly", "-n", "2", "-n3", "--dist=load", "-x"]) == ["-m", "nightly", "-x"]


def test_gpu_states_reserve_running_cases_and_read_measured_free() -> None:
    case = Case(MODEL, SIM)
    run = CaseRun(case, Demand(case.id, 30.0, vram_gib=16.0, kv_cache_bytes=GIB))
    run.placement = Placement(case.id, (1,), 16.0)
    run.proc = object()  # type: ignore[assignment]  # running: only presence matters here
    from harness.gpu.runner import Attempt

    run.attempts.append(Attempt((1,), 5.0))
    snap = [GpuSnapshot(0, 80 * GIB, 0), GpuSnapshot(1, 80 * GIB, 20 * GIB)]
    g0, g1 = gpu_states([80.0, 80.0], [run], snap, now_s=6.0)
    assert g0.running == () and g0.free_gib == 80.0
    assert g1.reserved_gib == 16.0 and g1.free_gib == 60.0 and g1.last_start_s == 5.0
    assert g1.running[0].ends_s == 35.0


def test_case_env_carries_devices_and_the_kv_cap() -> None:
    env = case_env(Placement("c", (2, 3), 10.0), Demand("c", 1.0, vram_gib=10.0, kv_cache_bytes=123), {"X": "1"})
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["HARNESS_KV_CACHE_BYTES"] == "123" and env["X"] == "1"


def test_demand_of_a_case() -> None:
    case = Case(MODEL, SIM)
    d = demand_of(case, {})
    assert (d.gpus, d.vram_gib, d.kv_cache_bytes, d.duration_from) == (1, 16.0, None, "estimate")
    assert demand_of(case, {case.id: 42.0}).duration_s == 42.0
    vllm = Topology("agg_router", "agg_router.sh", backend="vllm", workers=2)
    assert gpus_needed(Case(MODEL, vllm)) == 2
    assert gpus_needed(Case(MODEL, vllm, overrides={"env": {"SINGLE_GPU": "1"}})) == 1


def test_durations_come_from_earlier_reports(tmp_path: Path) -> None:
    run = tmp_path / "20260101-000000"
    (run / "cases").mkdir(parents=True)
    record = {
        "case": "a",
        "outcome": "passed",
        "duration_s": 0.5,
        "phases": {"boot_total": 2, "checks": 1, "teardown": 0.5},
    }
    (run / "cases" / "a.json").write_text(json.dumps(record))
    (run / "packing.json").write_text(json.dumps({"placements": [{"case": "b", "wall_s": 7.5, "rc": 0}]}))
    assert load_durations(tmp_path) == {"a": 6.0, "b": 7.5}
    assert load_durations(tmp_path / "missing") == {}


def test_cpu_quota() -> None:
    assert parse_cpu_max("200000 100000") == 2.0
    assert parse_cpu_max("max 100000") is None
    assert parse_cpu_max("garbage") is None
    assert cpu_budget() >= 1.0


def test_merge_junit(tmp_path: Path) -> None:
    (tmp_path / "junit").mkdir()
    for name, extra in (("a", ""), ("b", "<failure message='x'/>")):
        failures = 1 if extra else 0
        (tmp_path / "junit" / f"{name}.xml").write_text(
            f"<testsuites><testsuite tests='1' failures='{failures}' errors='0' skipped='0'>"
            f"<testcase name='{name}'>{extra}</testcase></testsuite></testsuites>"
        )
    merge_junit(tmp_path)
    text = (tmp_path / "junit.xml").read_text()
    assert 'tests="2"' in text and 'failures="1"' in text and text.count("<testcase") == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "--gpus", "8x"], "harness plan: --gpus must look like 8x80"),
        (["plan", "--gpus", "8x80", "--shard", "0/2"], "harness plan: --shard must look like i/n"),
        (["plan", "--gpus", "2x80", "--share-margin", "1.5"], "harness plan: --share-margin must be in [0, 1)"),
        (["run", "--gpus", "two"], "harness run: --gpus must look like 8x80"),
        (["run", "--backend", "vllm", "--gpus", "2x80"], "harness run: --gpus simulates GPUs"),
        (["run", "--shard", "3/2"], "harness run: --shard must look like i/n"),
    ],
)
def test_bad_packing_input_is_a_clear_cli_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_REPORTS_DIR", str(tmp_path))
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing ran, no run directory was made
