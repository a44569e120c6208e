"""The plugin with fake launch scripts as real processes: per-case records of stacks that pass, fail, never come
up (with the failing component's log in the record and the summary), and a boot cut short by pytest-timeout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.profiles import default_launch_dir
from harness.report.summary import verdict, write_summary
from harness.stack import ports
from harness.stack.processes import pid_alive, wait_until

pytestmark = pytest.mark.e2e
pytest_plugins = ["pytester"]


def run(pt: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pt.runpytest("-p", "no:cacheprovider", "--harness-profile-dir", str(pt.path / "profiles"), *args)


STACK_PROFILE = """\
from harness.profiles import Case, ModelProfile, Topology

M = ModelProfile("org/m-vl", "m")
CASES = [
    Case(M, Topology("gate", "fake.sh", marks=("pre_merge",), timeout_s=20)),
    Case(M, Topology("ctrl", "fake.sh", marks=("pre_merge",), timeout_s=20, expect="fail")),
    Case(M, Topology("ctrl", "fake.sh", marks=("pre_merge",), timeout_s=20, expect="fail"), suffix="reject"),
    # A control whose stack never comes up has not been rejected by the gate: it is an error.
    Case(M, Topology("broken", "die.sh", marks=("pre_merge",), timeout_s=20, expect="fail")),
    Case(M, Topology("oom", "oom.sh", marks=("nightly",), timeout_s=20)),
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
HANG_SH = f"""\
#!/usr/bin/env bash
source "{default_launch_dir().resolve() / "lib.sh"}"
spawn worker0 sleep 300
echo "CHILD_PIDS ${{PIDS[*]}}"
wait
"""
OOM_SH = f"""\
#!/usr/bin/env bash
source "{default_launch_dir().resolve() / "lib.sh"}"
spawn worker0 sh -c 'echo "loading weights"; echo "torch.OutOfMemoryError: CUDA out of memory"; exit 7'
wait_all_ready http://127.0.0.1:1/health "${{PIDS[0]}}" worker0
"""


@pytest.fixture
def stack_suite(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv(ports.ENV_DIR, str(tmp_path / "ports"))
    (pytester.mkdir("profiles") / "cases.py").write_text(STACK_PROFILE)
    launch = pytester.mkdir("launch")
    (launch / "fake.sh").write_text(FAKE_SH)
    (launch / "die.sh").write_text(DIE_SH)
    (launch / "oom.sh").write_text(OOM_SH)
    (launch / "hang.sh").write_text(HANG_SH)
    pytester.makepyfile(test_stack=STACK_TEST)
    return pytester


def test_records_and_summary_from_a_run(stack_suite: pytest.Pytester, tmp_path: Path) -> None:
    pytester = stack_suite
    report = tmp_path / "report"
    result = run(
        pytester,
        "--harness-launch-dir",
        str(pytester.path / "launch"),
        "--harness-report-dir",
        str(report),
        "-m",
        "pre_merge",
    )
    result.assert_outcomes(passed=1, failed=1, xfailed=1, errors=1, deselected=1)
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




def test_stack_that_did_not_come_up_shows_its_component_and_log(stack_suite: pytest.Pytester, tmp_path: Path) -> None:
    report = tmp_path / "report"
    launch = str(stack_suite.path / "launch")
    result = run(stack_suite, "--harness-launch-dir", launch, "--harness-report-dir", str(report), "-m", "nightly")
    result.assert_outcomes(errors=1, deselected=4)
    record = json.loads((report / "cases" / "mm_oom_m.json").read_text())
    launch_error = record["launch_error"]
    assert launch_error["component"] == "worker0"
    assert launch_error["reason"].startswith("worker0 exited with code 7 before it was ready")
    assert launch_error["log_tail"].splitlines() == ["loading weights", "torch.OutOfMemoryError: CUDA out of memory"]
    assert record["error"].startswith("LaunchError: mm_oom_m: stack did not come up: worker0 exited with code 7")
    write_summary(report)
    md = (report / "summary.md").read_text()
    details = md.split("## Failed checks", 1)[1].split("## Phase timings", 1)[0]
    assert "stack did not come up: worker0 exited with code 7 before it was ready" in details
    assert "(component: worker0)" in details
    assert "    torch.OutOfMemoryError: CUDA out of memory" in details  # the component's log, not the fixture's source
    assert "launch.py" not in details and "def harness_stack" not in details


TIMEOUT_CONFTEST = """\
import os
import signal
import threading
import time
from pathlib import Path

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    for item in items:  # ahead of the case's own timeout marker
        item.add_marker(pytest.mark.timeout(60.0), append=False)


@pytest.fixture(autouse=True)
def timeout_fires_during_boot():
    # Once the stack has started its child, make pytest-timeout's own timer due: the timeout fires mid-boot.
    log = Path(os.environ["HANG_LAUNCH_LOG"])

    def watch():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if log.exists() and "CHILD_PIDS" in log.read_text():
                signal.setitimer(signal.ITIMER_REAL, 0.01)
                return
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
"""


def test_timeout_during_boot_tears_the_stack_down(
    stack_suite: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest-timeout's exception ends the boot wait; the half-booted stack is ended there and then, not when
    pytest exits. The session runs in this process, which stays alive: any survivor would still be running."""
    report = tmp_path / "report"
    monkeypatch.setenv("HANG_LAUNCH_LOG", str(report / "logs" / "mm_hang_m.launch.log"))
    stack_suite.makeconftest(TIMEOUT_CONFTEST)
    (stack_suite.path / "profiles" / "cases.py").write_text(
        "from harness.profiles import Case, ModelProfile, Topology\n"
        "CASES = [Case(ModelProfile('org/m-vl', 'm'), Topology('hang', 'hang.sh', timeout_s=120))]\n"
    )
    launch = str(stack_suite.path / "launch")
    result = run(stack_suite, "--harness-launch-dir", launch, "--harness-report-dir", str(report))
    result.assert_outcomes(errors=1)
    log = (report / "logs" / "mm_hang_m.launch.log").read_text()
    m = re.search(r"^CHILD_PIDS (\d+)$", log, re.M)
    assert m, log
    # This process lives on, so no parent-death signal helps: only the boot's own teardown ends the child.
    child = int(m.group(1))
    wait_until(lambda: not pid_alive(child), 10, what=f"the stack's child {child} to end")
    record = json.loads((report / "cases" / "mm_hang_m.json").read_text())
    assert record["outcome"] == "failed"
    assert record["error"].startswith("Failed: Timeout (>60.0s)")
    assert ports._load(tmp_path / "ports" / "reserved.json") == {}
