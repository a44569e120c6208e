"""The pytest plugin, run in-process as pytest runs it: profile cases as parameters, -m by mark, the VRAM budget,
the dry-run plan, strict xfail for controls, per-case timeouts, an empty selection as a failure that explains
itself, and the record of a stack that could not start (no process is started here; the records of real fake
stacks are in tests/e2e/test_plugin_stacks.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.pytest_plugin import CHECKS_BUDGET_S, TEARDOWN_BUDGET_S
from harness.report.summary import write_summary

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


def test_plugin_registers_ci_markers(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider", "--markers")
    out = result.stdout.str()
    for name in ("pre_merge", "post_merge", "nightly", "sim", "vllm", "gpu_1"):
        assert f"@pytest.mark.{name}:" in out
    assert "--harness-dry-run" in pytester.runpytest("--help").stdout.str()


# --- per-case timeouts -----------------------------------------------------------------------------------------

TIMEOUT_PROFILE = """\
from harness.profiles import Case, ModelProfile, Topology

M = ModelProfile("org/m-vl", "m")
CASES = [
    Case(M, Topology("quick", "fake.sh", timeout_s=20)),
    Case(M, Topology("slow", "fake.sh", timeout_s=900)),
    Case(M, Topology("quick", "fake.sh", timeout_s=20), suffix="long", overrides={"timeout_s": 600}),
]
"""
TIMEOUT_TEST = """\
import time
from pathlib import Path


def test_timeout(harness_case, request):
    (marker,) = [m for m in request.node.iter_markers("timeout")]
    with open(Path(__file__).parent / "timeouts.txt", "a") as fh:
        fh.write(f"{harness_case.id} {marker.args[0]}\\n")
    if harness_case.id == "mm_quick_m":
        time.sleep(1.5)  # longer than the ini's 1 s: it passes only if the case's own timeout wins
"""


def test_each_case_gets_its_own_timeout(pytester: pytest.Pytester) -> None:
    (pytester.mkdir("profiles") / "cases.py").write_text(TIMEOUT_PROFILE)
    pytester.makepyfile(test_timeout=TIMEOUT_TEST)
    pytester.makeini("[pytest]\ntimeout = 1\n")
    result = run(pytester)
    result.assert_outcomes(passed=3)
    got = dict(line.split() for line in (pytester.path / "timeouts.txt").read_text().splitlines())
    budget = CHECKS_BUDGET_S + TEARDOWN_BUDGET_S
    assert {k: float(v) for k, v in got.items()} == {
        "mm_quick_m": 20 + budget,  # boot deadline + checks floor + teardown
        "mm_slow_m": 900 + 900 + TEARDOWN_BUDGET_S,  # a slow boot is given as long again for its checks
        "mm_quick_m_long": 600 + 600 + TEARDOWN_BUDGET_S,  # a case's override of timeout_s counts
    }


# --- an empty selection fails and says why ---------------------------------------------------------------------


def test_missing_profile_dir_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cases=TESTS)
    missing = pytester.path / "profles"
    result = pytester.runpytest("-p", "no:cacheprovider", "--harness-profile-dir", str(missing))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"harness profile directory {missing} does not exist" in result.stderr.str()


def test_profile_dir_without_cases_for_the_backend_is_a_usage_error(suite: pytest.Pytester) -> None:
    sim_only = suite.mkdir("sim_only")
    (sim_only / "cases.py").write_text(PROFILE.replace('"vllm"', '"sim"'))
    result = suite.runpytest("-p", "no:cacheprovider", "--harness-profile-dir", str(sim_only), "--backend", "vllm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"{sim_only} has no --backend vllm case: it has sim cases only" in result.stderr.str()
    empty = suite.mkdir("empty")
    result = suite.runpytest("-p", "no:cacheprovider", "--harness-profile-dir", str(empty))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"{empty} has no --backend sim case: it has no cases" in result.stderr.str()


def test_no_selection_is_explained_and_recorded(suite: pytest.Pytester, tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = run(suite, "-m", "pre_mrege", "--harness-report-dir", str(report))
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    selection = json.loads((report / "selection.json").read_text())
    assert selection == {
        "profile_dir": str(suite.path / "profiles"),
        "backend": "sim",
        "cases": 5,
        "marks": ["nightly", "post_merge", "pre_merge", "sim"],
        "selected": 0,
        "markexpr": "pre_mrege",
        "keyword": "",
    }
    out = result.stdout.str()
    assert "harness: no case selected: 5 --backend sim case(s) in " in out
    assert "-m 'pre_mrege' matched none; marks that exist: nightly, post_merge, pre_merge, sim" in out
    # A selection that runs cases records how many and says nothing of the kind.
    result = run(suite, "-m", "pre_merge", "-k", "test_passes", "--harness-report-dir", str(report))
    assert json.loads((report / "selection.json").read_text())["selected"] == 3
    assert "no case selected" not in result.stdout.str()


# --- the record of a stack that did not start ------------------------------------------------------------------

MISSING_SCRIPT_PROFILE = """\
from harness.profiles import Case, ModelProfile, Topology

CASES = [Case(ModelProfile("org/m-vl", "m"), Topology("gone", "no-such-script.sh", timeout_s=20))]
"""


def test_launch_error_record_names_the_reason_not_the_fixture_source(pytester: pytest.Pytester, tmp_path: Path) -> None:
    (pytester.mkdir("profiles") / "cases.py").write_text(MISSING_SCRIPT_PROFILE)
    pytester.mkdir("launch")
    pytester.makepyfile(test_stack="def test_stack(harness_stack):\n    pass\n")
    report = tmp_path / "report"
    result = run(pytester, "--harness-launch-dir", str(pytester.path / "launch"), "--harness-report-dir", str(report))
    result.assert_outcomes(errors=1)
    record = json.loads((report / "cases" / "mm_gone_m.json").read_text())
    script = pytester.path / "launch" / "no-such-script.sh"
    assert record["outcome"] == "failed"
    assert record["error"] == f"LaunchError: mm_gone_m: launch script {script} does not exist"
    assert record["launch_error"] == {
        "reason": f"mm_gone_m: launch script {script} does not exist",
        "component": "launch",
        "log_tail": "",
    }
    write_summary(report)
    md = (report / "summary.md").read_text()
    assert f"stack did not come up: mm_gone_m: launch script {script} does not exist (component: launch)" in md
    assert "def harness_stack" not in md and "LaunchError`" not in md  # no fixture source, no bare exception line
