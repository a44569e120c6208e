"""Teardown with real processes: whole process groups end, SIGTERM-deaf ones are SIGKILLed, launch scripts that
fail stop at once with their reason, and nothing survives an exception, Ctrl-C or SIGTERM in the test."""

from __future__ import annotations

import _thread
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from harness.profiles import Case, ModelProfile, Topology, default_launch_dir
from harness.stack import ports
from harness.stack.launch import LaunchError, Stack, launched, start_stack, stop_stack
from harness.stack.processes import ManagedProcess, spawn, wait_until

pytestmark = pytest.mark.e2e

DEADLINE_S = 10.0
LIB_SH = default_launch_dir().resolve() / "lib.sh"
MODEL = ModelProfile("org/fake-vl", "fake-vl", family="qwen3_vl")


# --- process helpers -------------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # [state, ppid, pgrp, ...]; the command name may hold spaces


def gone(pid: int) -> bool:
    """The process has ended. A zombie counts as ended: it runs nothing and holds no port, and an init that does
    not reap (some containers) would otherwise keep it forever."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    st = _stat(pid)
    return st is None or st[0] == "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and int(st[2]) == pgid and st[0] != "Z":
                out.append(int(entry.name))
    return out


def wait_gone(pids: Iterable[int], pgid: int | None = None, timeout_s: float = DEADLINE_S) -> None:
    pids = list(pids)
    assert pids
    wait_until(lambda: all(gone(p) for p in pids), timeout_s, what=f"processes {pids} to end")
    if pgid is not None:
        wait_until(lambda: not group_members(pgid), timeout_s, what=f"process group {pgid} to empty")


def log_pids(path: Path, label: str = "child") -> list[int]:
    return [int(p) for p in re.findall(rf"^{label} (\d+)$", path.read_text(), re.M)]


def start(tmp_path: Path, script: str, ready: str = "ready", leader_exits: bool = False) -> ManagedProcess:
    proc = spawn("t", ["bash", "-c", textwrap.dedent(script)], tmp_path / "proc.log")
    watch = [] if leader_exits else [proc]
    wait_until(lambda: ready in proc.log_path.read_text(), DEADLINE_S, procs=watch, what="script start")
    return proc


# --- procs: process groups -------------------------------------------------------------------------------------


def test_terminate_ends_the_whole_group(tmp_path: Path) -> None:
    proc = start(
        tmp_path,
        """
        sleep 300 &
        echo "child $!"
        sleep 300 &
        echo "child $!"
        echo ready
        wait
        """,
    )
    children = log_pids(proc.log_path)
    assert len(children) == 2
    assert not any(gone(p) for p in [proc.pid, *children])
    assert set(group_members(proc.pid)) == {proc.pid, *children}
    t0 = time.monotonic()
    rc = proc.terminate(grace_s=5.0)
    assert rc == -signal.SIGTERM
    assert time.monotonic() - t0 < 4.0  # it ended on SIGTERM; no need to sit out the grace period
    assert not proc.alive
    wait_gone([proc.pid, *children], pgid=proc.pid)


def test_terminate_kills_children_that_outlive_the_leader(tmp_path: Path) -> None:
    # The child ignores SIGTERM (the disposition survives exec), the leader does not.
    proc = start(
        tmp_path,
        """
        ( trap '' TERM; exec sleep 300 ) &
        echo "child $!"
        echo ready
        wait
        """,
    )
    (child,) = log_pids(proc.log_path)
    proc.terminate(grace_s=0.5)
    wait_gone([proc.pid, child], pgid=proc.pid)


def test_terminate_after_leader_exited_still_kills_group(tmp_path: Path) -> None:
    proc = start(tmp_path, 'sleep 300 & echo "child $!"; echo ready; exit 0', leader_exits=True)
    (child,) = log_pids(proc.log_path)
    wait_until(lambda: not proc.alive, DEADLINE_S, what="leader exit")
    assert not gone(child)
    assert proc.terminate(grace_s=1.0) == 0
    wait_gone([child], pgid=proc.pid)


def test_sigterm_ignoring_script_is_killed_after_grace(tmp_path: Path) -> None:
    proc = start(
        tmp_path,
        """
        trap '' TERM
        sleep 300 &
        echo "child $!"
        echo ready
        while :; do sleep 0.05; done
        """,
    )
    (child,) = log_pids(proc.log_path)
    t0 = time.monotonic()
    rc = proc.terminate(grace_s=0.5)
    elapsed = time.monotonic() - t0
    assert rc == -signal.SIGKILL
    assert 0.5 <= elapsed < 5.0
    wait_gone([proc.pid, child], pgid=proc.pid)


def test_spawn_logs_output_and_environment(tmp_path: Path) -> None:
    proc = spawn("t", ["bash", "-c", 'echo "out $FOO"; echo err >&2'], tmp_path / "sub" / "p.log", env={"FOO": "x"})
    wait_until(lambda: not proc.alive, DEADLINE_S, what="exit")
    assert proc.poll() == 0
    assert proc.log_path.read_text().splitlines() == ["out x", "err"]
    assert proc.log_tail(1) == "err"


# --- launch: start_stack / stop_stack / launched ---------------------------------------------------------------


FAKE_OK = f"""\
#!/usr/bin/env bash
source "{LIB_SH}"
echo "SEEN model=$HARNESS_MODEL backend=$HARNESS_BACKEND workers=$HARNESS_NUM_WORKERS ports=$HARNESS_WORKER_PORTS"
spawn worker0 sleep 300
phase launch_workers
echo "CHILD_PIDS ${{PIDS[*]}}"
FRONT_URL="http://127.0.0.1:$HARNESS_HTTP_PORT"
phase router
serve
"""
FAKE_DIE = f"""\
#!/usr/bin/env bash
source "{LIB_SH}"
spawn worker0 sleep 300
echo "CHILD_PIDS ${{PIDS[*]}}"
die "boom: worker0 could not start"
"""
FAKE_EXIT = """\
#!/usr/bin/env bash
echo "no lib here"
exit 3
"""
FAKE_HANG = f"""\
#!/usr/bin/env bash
source "{LIB_SH}"
spawn worker0 sleep 300
echo "CHILD_PIDS ${{PIDS[*]}}"
wait
"""


@pytest.fixture
def ports_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "ports"
    monkeypatch.setenv(ports.ENV_DIR, str(d))
    return d


@pytest.fixture
def launch_dir(tmp_path: Path, ports_dir: Path) -> Path:
    d = tmp_path / "launch"
    d.mkdir()
    for name, text in {"fake.sh": FAKE_OK, "die.sh": FAKE_DIE, "exit.sh": FAKE_EXIT, "hang.sh": FAKE_HANG}.items():
        (d / name).write_text(text)
    return d


def fake_case(script: str = "fake.sh", timeout_s: float = 60.0) -> Case:
    return Case(MODEL, Topology("fake", script, workers=1, router="none", timeout_s=timeout_s))


def stack_pids(stack: Stack) -> list[int]:
    m = re.search(r"^CHILD_PIDS (.+)$", stack.proc.log_path.read_text(), re.M)
    assert m, stack.proc.log_path.read_text()
    return [stack.proc.pid, *map(int, m.group(1).split())]


def logged_pids(log_dir: Path, case: Case) -> list[int]:
    m = re.search(r"^CHILD_PIDS (.+)$", (log_dir / f"{case.id}.launch.log").read_text(), re.M)
    assert m
    return [int(p) for p in m.group(1).split()]


def test_start_stack_ready_phases_env_and_stop(tmp_path: Path, launch_dir: Path, ports_dir: Path) -> None:
    case = fake_case()
    log_dir = tmp_path / "logs"
    stack = start_stack(case, log_dir, launch_dir=launch_dir)
    try:
        pids = stack_pids(stack)
        assert len(pids) == 2 and not any(gone(p) for p in pids)
        front, _metrics, worker = stack.ports
        assert len(set(stack.ports)) == 3
        assert stack.url == f"http://127.0.0.1:{front}"
        assert stack.worker_urls == [f"http://127.0.0.1:{worker}"]
        assert set(stack.phases) == {"launch_workers", "router"}
        assert all(isinstance(v, float) and 0.0 <= v < DEADLINE_S for v in stack.phases.values())
        log = stack.proc.log_path.read_text()
        assert f"SEEN model=org/fake-vl backend=sim workers=1 ports={worker}" in log
        assert stack.proc.log_path == log_dir / "mm_fake_fake-vl.launch.log"
        assert stack.log_path("worker0").exists()  # lib.sh's spawn logged the component under the prefix
        assert set(ports._load(ports_dir / "reserved.json")) == {str(p) for p in stack.ports}
    finally:
        took = stop_stack(stack)
    assert took < 5.0
    wait_gone(pids, pgid=stack.proc.pid)
    assert ports._load(ports_dir / "reserved.json") == {}  # ports released


def test_script_failure_raises_quickly_with_reason(tmp_path: Path, launch_dir: Path, ports_dir: Path) -> None:
    case = fake_case("die.sh", timeout_s=60.0)
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match="boom: worker0 could not start") as exc:
        start_stack(case, tmp_path / "logs", launch_dir=launch_dir)
    assert time.monotonic() - t0 < 5.0  # failed fast, not at the 60 s deadline
    assert case.id in str(exc.value)
    (child,) = logged_pids(tmp_path / "logs", case)
    wait_gone([child])
    assert ports._load(ports_dir / "reserved.json") == {}


def test_script_exit_without_reason_names_exit_code(tmp_path: Path, launch_dir: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match="exited with code 3") as exc:
        start_stack(fake_case("exit.sh"), tmp_path / "logs", launch_dir=launch_dir)
    assert time.monotonic() - t0 < 5.0
    assert "no lib here" in str(exc.value)  # the launch log's tail comes with it


def test_readiness_timeout_stops_the_stack(tmp_path: Path, launch_dir: Path, ports_dir: Path) -> None:
    case = fake_case("hang.sh")
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match="timed out"):
        start_stack(case, tmp_path / "logs", launch_dir=launch_dir, timeout_s=0.5)
    assert time.monotonic() - t0 < 5.0
    wait_gone(logged_pids(tmp_path / "logs", case))
    assert ports._load(ports_dir / "reserved.json") == {}


def test_missing_script(tmp_path: Path, launch_dir: Path, ports_dir: Path) -> None:
    with pytest.raises(LaunchError, match="does not exist"):
        start_stack(fake_case("nope.sh"), tmp_path / "logs", launch_dir=launch_dir)
    assert ports._load(ports_dir / "reserved.json") == {}


def test_a_relaunch_in_the_same_log_dir_reads_its_own_boot(tmp_path: Path, launch_dir: Path, ports_dir: Path) -> None:
    """The launch log is appended to: a second boot of the same case id must take its ready line, ports and
    phases from its own lines, and a relaunch that fails must fail, not connect to the last boot's dead ports."""
    log_dir = tmp_path / "logs"
    with launched(fake_case(), log_dir, launch_dir=launch_dir) as first:
        pass
    with launched(fake_case(), log_dir, launch_dir=launch_dir) as second:
        assert second.url == f"http://127.0.0.1:{second.ports[0]}"
        assert second.worker_urls == [f"http://127.0.0.1:{second.ports[2]}"]
        assert set(second.phases) == {"launch_workers", "router"}
        assert f"ports={first.ports[2]}" not in second.proc.log_text()
    log = (log_dir / f"{fake_case().id}.launch.log").read_text()
    assert log.count("HARNESS_READY") == 2  # both boots' lines are kept for the post-mortem
    with pytest.raises(LaunchError, match="boom: worker0 could not start"):
        start_stack(fake_case("die.sh"), log_dir, launch_dir=launch_dir)  # same case id, same log file


def test_launched_tears_down_on_normal_exit(tmp_path: Path, launch_dir: Path) -> None:
    with launched(fake_case(), tmp_path / "logs", launch_dir=launch_dir) as stack:
        pids = stack_pids(stack)
    assert "teardown" in stack.phases
    wait_gone(pids, pgid=stack.proc.pid)


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_launched_tears_down_on_exception(
    tmp_path: Path, launch_dir: Path, ports_dir: Path, exc_type: type[BaseException]
) -> None:
    pids: list[int] = []
    holder: list[Stack] = []
    with pytest.raises(exc_type), launched(fake_case(), tmp_path / "logs", launch_dir=launch_dir) as stack:
        holder.append(stack)
        pids = stack_pids(stack)
        assert not any(gone(p) for p in pids)
        raise exc_type("inside the with-block")
    assert "teardown" in holder[0].phases
    wait_gone(pids, pgid=holder[0].proc.pid)
    assert ports._load(ports_dir / "reserved.json") == {}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_boot_interrupted_tears_the_half_booted_stack_down(
    tmp_path: Path, launch_dir: Path, ports_dir: Path, sig: signal.Signals
) -> None:
    """Ctrl-C (or SIGTERM, which the plugin turns into KeyboardInterrupt) while the stack is still booting: nobody
    holds the stack yet, so start_stack itself must end it before the interrupt goes on."""
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    case = fake_case("hang.sh", timeout_s=60.0)
    log = tmp_path / "logs" / f"{case.id}.launch.log"

    def interrupt_once_booting() -> None:
        wait_until(lambda: log.exists() and "CHILD_PIDS" in log.read_text(), DEADLINE_S, what="the boot")
        _thread.interrupt_main(sig)  # as if the signal had arrived: its handler runs in the main thread

    watcher = threading.Thread(target=interrupt_once_booting, daemon=True)
    try:
        watcher.start()
        with pytest.raises(KeyboardInterrupt):
            start_stack(case, tmp_path / "logs", launch_dir=launch_dir)
    finally:
        signal.signal(signal.SIGTERM, previous)
        watcher.join(DEADLINE_S)
    # This process lives on, so no parent-death signal helps: only start_stack's own teardown ends them.
    wait_gone(logged_pids(tmp_path / "logs", case))
    assert ports._load(ports_dir / "reserved.json") == {}


# --- a pytest session that is interrupted mid-test -------------------------------------------------------------

INNER_TEST = """\
import os
import re
import time
from pathlib import Path


def test_hold(harness_stack):
    m = re.search(r"^CHILD_PIDS (.+)$", harness_stack.proc.log_path.read_text(), re.M)
    Path(os.environ["PIDFILE"]).write_text(f"{harness_stack.proc.pid} {m.group(1)}")
    while True:  # blocks until the session is signalled
        time.sleep(0.02)
"""
# Start with the default dispositions, whatever the caller's shell had (background jobs may ignore SIGINT).
RUNNER = (
    "import signal, sys, pytest\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
    "sys.exit(pytest.main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupted_session_tears_the_stack_down(
    tmp_path: Path, launch_dir: Path, ports_dir: Path, sig: signal.Signals
) -> None:
    work = tmp_path / "session"
    (work / "profiles").mkdir(parents=True)
    (work / "profiles" / "fake.py").write_text(
        "from harness.profiles import Case, ModelProfile, Topology\n"
        "CASES = [Case(ModelProfile('org/fake-vl', 'fake-vl'), Topology('fake', 'fake.sh', timeout_s=20))]\n"
    )
    (work / "test_hold.py").write_text(INNER_TEST)
    (work / "pytest.ini").write_text("[pytest]\n")
    pidfile = tmp_path / "pids"
    args = [
        "test_hold.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "--harness-profile-dir",
        str(work / "profiles"),
        "--harness-launch-dir",
        str(launch_dir),
        "--harness-report-dir",
        str(tmp_path / "report"),
    ]
    env = {**os.environ, "PIDFILE": str(pidfile), ports.ENV_DIR: str(ports_dir)}
    session = subprocess.Popen(
        [sys.executable, "-c", RUNNER, *args],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def started() -> bool:
            if session.poll() is not None:
                raise AssertionError(f"session ended early:\n{session.communicate()[0]}")
            return pidfile.exists() and bool(pidfile.read_text())

        wait_until(started, DEADLINE_S, what="the inner test to hold a stack")
        pids = [int(p) for p in pidfile.read_text().split()]
        assert len(pids) == 2 and not any(gone(p) for p in pids)
        session.send_signal(sig)
        out, _ = session.communicate(timeout=DEADLINE_S)
    finally:
        if session.poll() is None:
            session.kill()
            session.communicate()
    assert session.returncode == pytest.ExitCode.INTERRUPTED, out
    wait_gone(pids, pgid=pids[0])
    assert ports._load(ports_dir / "reserved.json") == {}
    # The interrupted case has its record, as interrupted (it never got a teardown report), with its teardown.
    record = json.loads((tmp_path / "report" / "cases" / "mm_fake_fake-vl.json").read_text())
    assert record["outcome"] == "interrupted"
    assert "teardown" in record["phases"]
    assert len(out.splitlines()) < 60, out  # one interrupt, one short report: no cascade of tracebacks
