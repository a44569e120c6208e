"""Abort matrix: ``harness run`` cut short by SIGINT, SIGTERM or SIGKILL, sent to ``harness run``, to its pytest,
or to its whole process group (a terminal's Ctrl-C), while the stack boots and while the gate's checks run,
leaves no process behind; a signal to ``harness run`` ends it with 128+signal and a red report naming it.

Every process of a trial carries a unique environment marker, so survivors are found through
``/proc/<pid>/environ`` (the marker is inherited by pytest, the launch script and its components); the fake stack
is bash plus ``sleep`` and two loopback servers that accept and never answer, so a trial costs little CPU.
Trials run a few at a time; each waits on conditions with deadlines, never on a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.profiles import default_launch_dir
from harness.stack import ports
from harness.stack.processes import wait_until

pytestmark = pytest.mark.e2e

DEADLINE_S = 60.0  # generous: a busy 2-core CI machine runs several trials at once
MARK = "HARNESS_ABORT_TRIAL"

PROFILE = """\
from harness.profiles import Case, ModelProfile, Topology

CASES = [Case(ModelProfile("org/abort-vl", "abort"), Topology("abort", "abort.sh", marks=("pre_merge",),
                                                               timeout_s=60))]
"""
# Boot: a component, then (moment "checks") two servers that accept connections and never answer, so the gate's
# first request hangs; (moment "boot") never ready.
HANG_SERVER = (
    "import socket, sys\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(64); held = []\n"
    "print('LISTENING', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept(); held.append(c); print('ACCEPTED', flush=True)\n"
)
LAUNCH = f"""\
#!/usr/bin/env bash
source "{default_launch_dir().resolve() / "lib.sh"}"
spawn child sleep 300
echo "CHILD_PIDS ${{PIDS[*]}}"
if [ "$ABORT_MOMENT" = boot ]; then wait; exit 1; fi
spawn worker0 "$HARNESS_PYTHON" -c "$HANG_SERVER" "${{HARNESS_WORKER_PORTS%% *}}"
spawn router "$HARNESS_PYTHON" -c "$HANG_SERVER" "$HARNESS_HTTP_PORT"
until grep -q LISTENING "$(log_file worker0)" && grep -q LISTENING "$(log_file router)"; do sleep 0.05; done
FRONT_URL="http://127.0.0.1:$HARNESS_HTTP_PORT"
serve
"""

Target = str  # "harness" | "pytest" | "group"


@dataclass(frozen=True)
class Trial:
    sig: signal.Signals
    target: Target
    moment: str  # "boot" | "checks"

    @property
    def name(self) -> str:
        return f"{self.sig.name} to {self.target} during {self.moment}"


TRIALS = [
    Trial(sig, target, moment)
    for moment in ("boot", "checks")
    for target in ("harness", "pytest", "group")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
]


def marked(token: str) -> list[int]:
    """Live processes whose environment carries this trial's marker (zombies run nothing: not counted)."""
    needle = f"{MARK}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("abort")
    (d / "profiles").mkdir()
    (d / "profiles" / "abort.py").write_text(PROFILE)
    (d / "launch").mkdir()
    (d / "launch" / "abort.sh").write_text(LAUNCH)
    return d


def run_trial(work: Path, trial: Trial, index: int) -> list[str]:
    """One ``harness run``, cut short as the trial says. Returns what went wrong (empty: nothing)."""
    token = uuid.uuid4().hex
    trial_dir = work / f"trial{index}"
    reports = trial_dir / "reports"
    env = {
        **os.environ,
        MARK: token,
        "ABORT_MOMENT": trial.moment,
        "HANG_SERVER": HANG_SERVER,
        ports.ENV_DIR: str(work / "ports"),
        "HF_HUB_OFFLINE": "1",
    }
    out_path = trial_dir / "out.txt"
    trial_dir.mkdir()
    cmd = [sys.executable, "-m", "harness.cli", "run", "--reports-dir", str(reports),
           "--harness-profile-dir", str(work / "profiles"), "--harness-launch-dir", str(work / "launch")]  # fmt: skip
    problems: list[str] = []
    with open(out_path, "wb") as out:
        harness = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def at_moment() -> bool:
            log = next(reports.glob("*/logs/*.launch.log"), None)
            if log is None:
                return False
            if trial.moment == "boot":
                return "CHILD_PIDS" in log.read_text()
            servers = [*log.parent.glob("*.worker0.log"), *log.parent.glob("*.router.log")]
            return any("ACCEPTED" in p.read_text() for p in servers)  # the gate's first request hangs there

        wait_until(at_moment, DEADLINE_S, interval_s=0.05, what=f"{trial.name}: the moment to come")
        if trial.target == "harness":
            os.kill(harness.pid, trial.sig)
        elif trial.target == "group":
            os.killpg(harness.pid, trial.sig)  # harness run leads its own group, as in a terminal
        else:
            (pytest_pid,) = children_of(harness.pid)
            os.kill(pytest_pid, trial.sig)
        rc = harness.wait(DEADLINE_S)
        try:
            wait_until(lambda: not marked(token), DEADLINE_S / 2, what="every process of the trial to end")
        except TimeoutError:
            left = marked(token)
            cmdlines = [(Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120]) for p in left]
            problems.append(f"{trial.name}: left behind {left}: {cmdlines}")
        out_text = out_path.read_text(errors="replace")
        problems += check_outcome(trial, rc, reports, out_text)
    except Exception as exc:  # a trial that could not even be run is a failure too, named
        problems.append(f"{trial.name}: {type(exc).__name__}: {exc}\n{out_path.read_text(errors='replace')[-2000:]}")
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait(DEADLINE_S)
        for pid in marked(token):  # never by name: only the processes that carry this trial's marker
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return problems


def check_outcome(trial: Trial, rc: int, reports: Path, out: str) -> list[str]:
    """Exit status and report of the aborted run."""
    problems = []
    to_harness = trial.target in ("harness", "group")
    if to_harness and trial.sig == signal.SIGKILL:
        return [] if rc == -signal.SIGKILL else [f"{trial.name}: exit {rc}, expected -9"]
    expected_rc = 128 + trial.sig if to_harness or trial.sig == signal.SIGKILL else pytest.ExitCode.INTERRUPTED
    if rc != expected_rc:
        problems.append(f"{trial.name}: exit {rc}, expected {expected_rc}\n{out[-3000:]}")
    runs = [p for p in reports.glob("*/run.json") if p.parent.name != "latest"]
    if len(runs) != 1:
        return [*problems, f"{trial.name}: {len(runs)} run.json files"]
    run = json.loads(runs[0].read_text())
    if run["totals"]["green"] is not False:
        problems.append(f"{trial.name}: an aborted run reads green")
    if to_harness and run["run"]["interrupted"] != trial.sig.name:
        problems.append(f"{trial.name}: run.json says interrupted={run['run']['interrupted']!r}")
    if trial.sig != signal.SIGKILL:
        record = next(runs[0].parent.glob("cases/*.json"), None)
        if record is None or json.loads(record.read_text()).get("outcome") not in ("interrupted", "failed"):
            problems.append(f"{trial.name}: the interrupted case has no record saying so")
    if "Traceback (most recent call last)" in out or len(out.splitlines()) > 150:
        problems.append(f"{trial.name}: {len(out.splitlines())} lines of output with tracebacks:\n{out[-3000:]}")
    return problems


def test_no_abort_leaves_a_process_behind(work: Path) -> None:
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda it: run_trial(work, it[1], it[0]), enumerate(TRIALS)))
    problems = [p for trial_problems in results for p in trial_problems]
    assert problems == [], "\n\n".join(problems)
