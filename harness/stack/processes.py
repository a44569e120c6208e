"""Processes the harness starts: own session (so a whole tree can be signalled), output to a log file,
readiness with a deadline that fails fast when the process dies, and teardown by process group: SIGTERM,
a grace period, then SIGKILL. Nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

_PR_SET_PDEATHSIG = 1
try:  # Linux: let the kernel signal our children if this process dies without tearing them down (SIGKILL)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` (it runs in the child between fork and exec) that has the kernel send ``sig`` to the
    child when the process that started it dies, SIGKILL included (``prctl(2)`` PR_SET_PDEATHSIG, Linux only).

    The parent's pid is taken before the fork: if the parent died before ``prctl`` took effect, the signal was
    never armed, so the child ends before it execs (the race ``prctl(2)`` itself warns about). The signal is tied
    to the *thread* that forked, so start the child from a thread that lives as long as the child should."""
    parent = os.getpid()

    def arm() -> None:
        if _prctl is None:
            return
        _prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os._exit(128 + sig)

    return arm


class ProcessExitedError(RuntimeError):
    """A process ended while we waited for it to become ready."""


class ReadyTimeoutError(TimeoutError):
    pass


def pid_alive(pid: int) -> bool:
    """True if ``pid`` names a live process (a zombie, dead but unreaped, is not alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except (OSError, IndexError):
        return True  # no procfs: trust kill(0)


def tail(path: Path, lines: int = 20, start: int = 0) -> str:
    """The last ``lines`` lines of ``path``, of what follows byte ``start`` only (a log appended to by one process
    after another: the earlier ones' lines are not this one's)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(start, size - 16384))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    #: The log's size when this process was started: ``spawn`` appends, so what came before is an earlier run's.
    log_start: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines, self.log_start)

    def log_text(self) -> str:
        """Everything this process has written to its log (not what earlier runs appended before it)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self.log_start)
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def signal_group(self, sig: int) -> None:
        # The process leads its own session, so its pgid is its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def terminate(self, grace_s: float = 5.0) -> int | None:
        """SIGTERM the group, wait ``grace_s``, then SIGKILL it. Returns the exit code."""
        try:
            if self.alive:
                self.signal_group(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(grace_s)
        finally:
            # Children may outlive the leader; the group is ours either way. Also reached when the grace wait is
            # cut short (a second Ctrl-C, pytest-timeout's SIGALRM): the group is never left half-ended.
            self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace_s)
        return self.popen.returncode


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> ManagedProcess:
    """Start ``argv`` in its own session, stdout and stderr appended to ``log_path`` (earlier runs' lines are kept
    for the post-mortem; ``ManagedProcess.log_text`` reads this run's only)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log_start = log.seek(0, os.SEEK_END)
        popen = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            # Launch scripts trap SIGTERM and end their own children: even a SIGKILLed pytest leaves no stack.
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
    return ManagedProcess(name=name, argv=list(argv), log_path=log_path, popen=popen, log_start=log_start)


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    *,
    interval_s: float = 0.05,
    procs: Sequence[ManagedProcess] = (),
    what: str = "condition",
) -> None:
    """Poll ``condition`` until true; raise at the deadline, or at once if one of ``procs`` has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        for p in procs:
            rc = p.poll()
            if rc is not None:
                raise ProcessExitedError(
                    f"{p.name} (pid {p.pid}) exited with code {rc} while waiting for {what}; last log lines:\n"
                    f"{p.log_tail()}"
                )
        if condition():
            return
        if time.monotonic() >= deadline:
            details = "".join(f"\n--- {p.name} ---\n{p.log_tail()}" for p in procs)
            raise ReadyTimeoutError(f"timed out after {timeout_s:.1f}s waiting for {what}{details}")
        time.sleep(interval_s)


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def wait_http_ready(url: str, proc: ManagedProcess, timeout_s: float = 30.0) -> None:
    wait_until(lambda: http_ok(url), timeout_s, procs=[proc], what=f"{proc.name} at {url}")
