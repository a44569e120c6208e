"""The pytest plugin, run as pytest runs it: profile cases as parameters, -m by mark, the VRAM budget, the dry-run
plan, strict xfail for controls, and per-case records (with a fake launch script, no real stack)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.profiles import default_launch_dir
from harness.report.summary import verdict, write_summary
from harness.stack import ports

pytest_plugins = ["pytester"]

PROFILE = """\
from harness.profiles import Case, ModelProfile, Topology

M = ModelProfile("org/m-vl", "m")
GATE = Topology("gate", "fake.sh", marks=("pre_merge",), profiled_vram_gib=8.0)
CTRL = Topology("ctrl", "fake.sh", marks=("pre_merge",), profiled_vram_gib=8.0, expect="fail")
BIG = Topology("big", "fake.sh", marks=("post_merge",), profiled_vram_gib=40.0)
UNKNOWN = Topology("unk", "fake.sh", marks=("nightly",))
GPU = Topology("gpu", "fake.sh", backend="vllm", marks=("pre_merge",), profiled_vram_gib=10.0)

CASES = [
    Case(M, GATE),
    Case(M, GATE, payload="base64", suffix="b64"),
    Case(M, CTRL),
    Case(M, BIG),
    Case(M, UNKNOWN),
    Case(M, GPU),
]
"""
SIM_IDS = ["mm_gate_m", "mm_gate_m_b64", "mm_ctrl_m", "mm_big_m", "mm_unk_m"]

TESTS = """\
from pathlib import Path


def test_passes(harness_case):
    with open(Path(__file__).parent / "ran.txt", "a") as fh:
        fh.write(harness_case.id + "\\n")
    assert harness_case.id.startswith("mm_")


def test_fails_controls(harness_case):
    assert harness_case.id != "mm_ctrl_m"
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    profiles = pytester.mkdir("profiles")
    (profiles / "cases.py").write_text(PROFILE)
    pytester.makepyfile(test_cases=TESTS)
    return pytester


def run(pt: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pt.runpytest("-p", "no:cacheprovider", "--harness-profile-dir", str(pt.path / "profiles"), *args)


def collected(result: pytest.RunResult, test: str = "test_passes") -> list[str]:
    return re.findall(rf"^test_cases\.py::{test}\[(.+)\]$", "\n".join(result.outlines), re.M)


def ran(pt: pytest.Pytester) -> list[str]:
    path = pt.path / "ran.txt"
    return path.read_text().split() if path.exists() else []


def test_cases_parametrized_by_id(suite: pytest.Pytester) -> None:
    result = run(suite, "--collect-only", "-q")
    assert collected(result) == SIM_IDS
    assert collected(result, "test_fails_controls") == SIM_IDS
    assert "mm_gpu_m" not in result.stdout.str()  # --backend sim is the default


def test_backend_option_picks_cases(suite: pytest.Pytester) -> None:
    result = run(suite, "--collect-only", "-q", "--backend", "vllm")
    assert collected(result) == ["mm_gpu_m"]


def test_mark_selection(suite: pytest.Pytester) -> None:
    result = run(suite, "-m", "pre_merge and not xfail", "-k", "test_passes", "--strict-markers")
    result.assert_outcomes(passed=2, deselected=8)
    assert ran(suite) == ["mm_gate_m", "mm_gate_m_b64"]


def test_mark_selection_with_backend_and_gpu_marks(suite: pytest.Pytester) -> None:
    result = run(suite, "--backend", "vllm", "-m", "vllm and gpu_1 and pre_merge", "--strict-markers", "-k", "passes")
    result.assert_outcomes(passed=1, deselected=1)
    assert ran(suite) == ["mm_gpu_m"]
    assert run(suite, "-m", "gpu_1", "--collect-only", "-q").ret == pytest.ExitCode.NO_TESTS_COLLECTED  # sim: none


def test_vram_budget_deselects_over_budget_and_unknown(suite: pytest.Pytester) -> None:
    result = run(suite, "--max-vram-gib", "16", "-k", "test_passes")
    result.assert_outcomes(passed=2, failed=1, deselected=7)  # 5 by -k, big and unk by budget
    assert sorted(ran(suite)) == ["mm_ctrl_m", "mm_gate_m", "mm_gate_m_b64"]


def test_vram_budget_at_profile_is_kept(suite: pytest.Pytester) -> None:
    result = run(suite, "--max-vram-gib", "8", "-k", "test_passes", "-m", "not xfail")
    result.assert_outcomes(passed=2, deselected=8)
    result = run(suite, "--max-vram-gib", "7.9", "-k", "test_passes", "--collect-only", "-q")
    assert collected(result) == []


def test_dry_run_prints_plan_and_runs_nothing(suite: pytest.Pytester) -> None:
    result = run(suite, "--harness-dry-run", "-k", "test_passes")
    result.assert_outcomes(deselected=10)
    out = result.stdout.str()
    assert "harness plan: 5 case(s) selected, 0 deselected by VRAM budget" in out
    for case_id in SIM_IDS:
        assert re.search(rf"^\s+{re.escape(case_id)}\s+sim\s+workers=1", out, re.M), case_id
    assert re.search(r"^\s+mm_ctrl_m\s.*expect=fail marks=sim,pre_merge$", out, re.M)
    assert ran(suite) == []


def test_dry_run_with_marks_and_budget(suite: pytest.Pytester) -> None:
    result = run(suite, "--harness-dry-run", "-k", "test_passes", "-m", "not nightly", "--max-vram-gib", "16")
    out = result.stdout.str()
    assert "harness plan: 3 case(s) selected, 1 deselected by VRAM budget" in out
    assert "- mm_big_m: profiled 40.0 GiB > budget 16.0 GiB" in out
    assert "mm_unk_m" not in out  # -m removed it before the budget was applied
    assert ran(suite) == []
    result.assert_outcomes(deselected=10)


def test_controls_are_strict_xfail(suite: pytest.Pytester) -> None:
    result = run(suite, "-m", "pre_merge", "-rA")
    # test_passes: the control passes -> strict XPASS -> failed; test_fails_controls: the control fails -> xfailed.
    result.assert_outcomes(passed=4, failed=1, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "*XFAIL test_cases.py::test_fails_controls[[]mm_ctrl_m[]]*",
            "*FAILED test_cases.py::test_passes[[]mm_ctrl_m[]]*",
        ]
    )
    assert "XPASS(strict)" in result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_control_error_is_not_a_rejection(suite: pytest.Pytester) -> None:
    """Only the gate's assertion rejects a control; any other error (a broken stack, a crash) is a failure."""
    suite.makepyfile(
        test_err="""
        def test_err(harness_case):
            raise RuntimeError("stack broke: " + harness_case.id)
        """
    )
    result = run(suite, "test_err.py", "-m", "pre_merge")
    result.assert_outcomes(failed=3, xfailed=0)
    result.stdout.fnmatch_lines(["*FAILED test_err.py::test_err[[]mm_ctrl_m[]]*"])


# --- per-case records, with a fake launch script ---------------------------------------------------------------

STACK_PROFILE = """\
from harness.profiles import Case, ModelProfile, Topology

M = ModelProfile("org/m-vl", "m")
CASES = [
    Case(M, Topology("gate", "fake.sh", marks=("pre_merge",), timeout_s=20)),
    Case(M, Topology("ctrl", "fake.sh", marks=("pre_merge",), timeout_s=20, expect="fail")),
    Case(M, Topology("ctrl", "fake.sh", marks=("pre_merge",), timeout_s=20, expect="fail"), suffix="reject"),
    # A control whose stack never comes up has not been rejected by the gate: it is an error.
    Case(M, Topology("broken", "die.sh", marks=("pre_merge",), timeout_s=20, expect="fail")),
]
"""
STACK_TEST = """\
def test_stack(harness_stack):
    assert harness_stack.url.startswith("http://127.0.0.1:")
    assert not harness_stack.case.id.endswith("_reject")
"""
FAKE_SH = f"""\
#!/usr/bin/env bash
source "{default_launch_dir().resolve() / "lib.sh"}"
spawn worker0 sleep 300
phase launch_workers
FRONT_URL="http://127.0.0.1:$HARNESS_HTTP_PORT"
phase router
serve
"""
DIE_SH = f"""\
#!/usr/bin/env bash
source "{default_launch_dir().resolve() / "lib.sh"}"
die "worker0 crashed"
"""


def test_records_and_summary_from_a_run(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ports.ENV_DIR, str(tmp_path / "ports"))
    (pytester.mkdir("profiles") / "cases.py").write_text(STACK_PROFILE)
    launch = pytester.mkdir("launch")
    (launch / "fake.sh").write_text(FAKE_SH)
    (launch / "die.sh").write_text(DIE_SH)
    pytester.makepyfile(test_stack=STACK_TEST)
    report = tmp_path / "report"
    result = run(
        pytester,
        "--harness-launch-dir",
        str(pytester.path / "launch"),
        "--harness-report-dir",
        str(report),
    )
    result.assert_outcomes(passed=1, failed=1, xfailed=1, errors=1)
    records = {p.stem: json.loads(p.read_text()) for p in (report / "cases").glob("*.json")}
    assert set(records) == {"mm_gate_m", "mm_ctrl_m", "mm_ctrl_m_reject", "mm_broken_m"}
    assert {k: r["outcome"] for k, r in records.items()} == {
        "mm_gate_m": "passed",
        "mm_ctrl_m": "xpassed",
        "mm_ctrl_m_reject": "xfailed",
        "mm_broken_m": "failed",
    }
    assert {k: verdict(r) for k, r in records.items()} == {
        "mm_gate_m": "pass",
        "mm_ctrl_m": "GOT THROUGH",
        "mm_ctrl_m_reject": "rejected",
        "mm_broken_m": "error (failed)",
    }
    assert "worker0 crashed" in records["mm_broken_m"]["error"]
    gate = records["mm_gate_m"]
    assert gate["expect"] == "pass" and records["mm_ctrl_m"]["expect"] == "fail"
    assert gate["marks"] == ["sim", "pre_merge"]
    assert gate["model"] == "org/m-vl" and gate["topology"] == "gate"
    assert {"boot_total", "launch_workers", "router", "teardown"} <= set(gate["phases"])
    assert Path(gate["logs"]) == report / "logs"
    assert (report / "logs" / "mm_gate_m.launch.log").read_text().count("HARNESS_READY url=") == 1
    assert ports._load(tmp_path / "ports" / "reserved.json") == {}  # every stack released its ports

    totals = write_summary(report)
    assert (totals.cases, totals.ok, totals.failed, totals.controls_through, totals.controls_rejected) == (
        4,
        2,
        1,
        1,
        1,
    )
    assert not totals.green
    assert "| mm_ctrl_m | fail | GOT THROUGH |" in (report / "summary.md").read_text()


def test_plugin_registers_ci_markers(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider", "--markers")
    out = result.stdout.str()
    for name in ("pre_merge", "post_merge", "nightly", "sim", "vllm", "gpu_1"):
        assert f"@pytest.mark.{name}:" in out
    assert "--harness-dry-run" in pytester.runpytest("--help").stdout.str()
