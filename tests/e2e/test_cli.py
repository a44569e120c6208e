"""The `harness` command line as a user runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.profiles import default_profile_dir, find_case, load_profiles
from harness.stack.processes import pid_alive, spawn, wait_until
from tests.helpers import MODEL, data_url, image_message, png_bytes

pytestmark = pytest.mark.e2e


CASE_ID = "mm_agg_router_qwen3-vl-2b"
#: Only safety nets, never the judge: `stack up` fails by itself (exit 1, with the reason) when its stack misses the
#: profile's boot deadline, and its teardown is bounded by construction (SIGTERM, 5 s grace, SIGKILL), so on a busy
#: machine these deadlines only have to outlast the harness's own.
BOOT_DEADLINE_S = find_case(load_profiles(default_profile_dir()), CASE_ID).effective.timeout_s + 60
EXIT_DEADLINE_S = 120.0


def test_stack_up_serves_until_interrupted(tmp_path: Path) -> None:
    log = tmp_path / "stack-up.log"
    proc = spawn(
        "stack-up",
        [
            sys.executable,
            "-m",
            "harness.cli",
            "stack",
            "up",
            "--profile",
            CASE_ID,
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        log,
    )
    try:
        wait_until(lambda: "Ctrl-C to stop." in log.read_text(), BOOT_DEADLINE_S, procs=[proc], what="stack up")
        text = log.read_text()
        url = re.search(r"is up: (http://127\.0\.0\.1:\d+)", text).group(1)
        workers = re.search(r"workers: (.+)", text).group(1).split()
        assert len(workers) == 2
        r = httpx.post(
            f"{url}/v1/chat/completions",
            timeout=EXIT_DEADLINE_S,
            json={"model": MODEL, "messages": image_message(data_url(png_bytes((0, 200, 0))))},
        )
        assert r.status_code == 200 and "green" in r.json()["choices"][0]["message"]["content"]
        stack_pids = [
            int(m)
            for m in re.findall(
                r"started \S+ \(pid (\d+)\)", next((tmp_path / "logs").glob("*.launch.log")).read_text()
            )
        ]
        assert len(stack_pids) == 3
        proc.popen.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.popen.wait(EXIT_DEADLINE_S) == 0
        assert "stack stopped" in log.read_text()
        # stop_stack waited for the group (SIGKILL included): nothing is left to wait for but the kernel's reaping.
        wait_until(lambda: not any(pid_alive(p) for p in stack_pids), 30, what="the stack's processes to end")
    finally:
        proc.terminate()


def test_stack_up_unknown_profile_names_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "harness.cli", "stack", "up", "--profile", "mm_nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "no profile case 'mm_nope'" in out.stderr and "Traceback" not in out.stderr


# --- harness run: runs that gate nothing fail, and say why --------------------------------------------------------


def harness_run(reports: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--reports-dir", str(reports), *args],
        capture_output=True,
        text=True,
        timeout=EXIT_DEADLINE_S,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    """A reports directory whose ``latest`` points at an earlier, real run."""
    root = tmp_path / "reports"
    (root / "20000101-000000").mkdir(parents=True)
    (root / "latest").symlink_to("20000101-000000")
    return root


def test_run_selecting_no_case_fails_names_the_mark_and_keeps_latest(reports: Path) -> None:
    out = harness_run(reports, "-m", "pre_mrege")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "-m 'pre_mrege' matched none; marks that exist: " in out.stderr
    assert "pre_merge" in out.stderr.split("marks that exist: ", 1)[1]
    assert os.readlink(reports / "latest") == "20000101-000000"
    (run_dir,) = [p for p in reports.iterdir() if p.name not in ("latest", "20000101-000000")]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["totals"]["green"] is False
    assert run["run"]["exit_code"] == pytest.ExitCode.NO_TESTS_COLLECTED
    assert run["run"]["command"][-2:] == ["-m", "pre_mrege"]
    assert (run_dir / "summary.md").read_text().startswith("# mmharness sim gates: FAIL")


def test_run_with_a_mistyped_profile_dir_is_a_usage_error(reports: Path, tmp_path: Path) -> None:
    out = harness_run(reports, "--harness-profile-dir", str(tmp_path / "profles"))
    assert out.returncode == pytest.ExitCode.USAGE_ERROR
    assert f"harness profile directory {tmp_path / 'profles'} does not exist" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert os.readlink(reports / "latest") == "20000101-000000"


DIE_SH = """\
#!/usr/bin/env bash
source "$HARNESS_LIB_SH"
spawn worker0 sh -c 'echo "torch.OutOfMemoryError: CUDA out of memory"; exit 7'
wait_all_ready http://127.0.0.1:1/health "${PIDS[0]}" worker0
"""


def test_run_json_records_the_run_and_the_summary_shows_why_a_stack_failed(reports: Path, tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "oom.py").write_text(
        "from harness.profiles import Case, ModelProfile, Topology\n"
        "CASES = [Case(ModelProfile('org/m-vl', 'm'), Topology('oom', 'die.sh', timeout_s=20))]\n"
    )
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "die.sh").write_text(DIE_SH)
    args = ("--harness-profile-dir", str(tmp_path / "profiles"), "--harness-launch-dir", str(tmp_path / "launch"))
    out = harness_run(reports, *args)
    assert out.returncode == 1, out.stdout + out.stderr
    run_dir = reports / os.readlink(reports / "latest")  # a run that ran a case moves latest
    run = json.loads((run_dir / "run.json").read_text())["run"]
    assert run["exit_code"] == 1 and run["interrupted"] is None
    assert run["command"] == ["harness", "run", "--reports-dir", str(reports), *args]
    assert run["pytest_command"][1:3] == ["-m", "pytest"]
    assert run["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", run["git_commit"])
    assert run["versions"]["pytest"] == pytest.__version__ and run["versions"]["python"]
    assert run["started"] <= run["ended"]
    summary = (run_dir / "summary.md").read_text()
    assert "stack did not come up: worker0 exited with code 7 before it was ready" in summary
    assert "(component: worker0)" in summary and "    torch.OutOfMemoryError: CUDA out of memory" in summary
    assert "launch.py:" not in summary  # not the bare exception location of the old report


HANG_SH = """\
#!/usr/bin/env bash
source "$HARNESS_LIB_SH"
spawn worker0 sleep 300
echo "CHILD_PIDS ${PIDS[*]}"
wait
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_stack_up_interrupted_during_boot_stops_the_stack(tmp_path: Path, sig: signal.Signals) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "hang.py").write_text(
        "from harness.profiles import Case, ModelProfile, Topology\n"
        "CASES = [Case(ModelProfile('org/m-vl', 'm'), Topology('hang', 'hang.sh', timeout_s=120))]\n"
    )
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "hang.sh").write_text(HANG_SH)
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "harness.cli", "stack", "up", "--profile", "mm_hang_m", "--log-dir", str(logs),
           "--profile-dir", str(tmp_path / "profiles"), "--launch-dir", str(tmp_path / "launch")]  # fmt: skip
    proc = spawn("stack-up", cmd, tmp_path / "stack-up.log")
    try:
        launch_log = logs / "mm_hang_m.launch.log"
        wait_until(lambda: launch_log.exists() and "CHILD_PIDS" in launch_log.read_text(), EXIT_DEADLINE_S,
                   procs=[proc], what="the stack to be booting")  # fmt: skip
        (child,) = (int(p) for p in re.search(r"^CHILD_PIDS (.+)$", launch_log.read_text(), re.M).group(1).split())
        proc.popen.send_signal(sig)
        assert proc.popen.wait(EXIT_DEADLINE_S) == 130
        out = (tmp_path / "stack-up.log").read_text()
        assert "interrupted; stack stopped" in out and "Traceback" not in out
        wait_until(lambda: not pid_alive(child), 30, what="the booting stack's child to end")
    finally:
        proc.terminate()
