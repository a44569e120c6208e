"""A harness process killed outright (SIGKILL: no finalizers run) must still not leave its stack behind: the
kernel's parent-death signal reaches the launch script, whose trap ends its own children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.stack.processes import pid_alive, wait_until

pytestmark = pytest.mark.e2e

LIB = Path(__file__).resolve().parents[2] / "launch" / "lib.sh"


def test_sigkilled_parent_takes_its_stack_down(tmp_path: Path) -> None:
    script = tmp_path / "stack.sh"
    script.write_text(f'source {LIB}\nspawn child sleep 300\necho "CHILD ${{PIDS[0]}}"\nFRONT_URL=none\nserve\n')
    driver = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from harness.stack.processes import spawn
        p = spawn("stack", ["bash", {str(script)!r}], Path({str(tmp_path / "stack.log")!r}),
                  env={{"PATH": "/usr/bin:/bin", "HARNESS_LOG_DIR": {str(tmp_path)!r}}})
        print(p.pid, flush=True)
        time.sleep(300)
    """)
    parent = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        stack_pid = int(parent.stdout.readline())
        log = tmp_path / "stack.log"
        wait_until(lambda: log.exists() and "CHILD " in log.read_text(), 10, what="the stack's child")
        child_pid = int(log.read_text().split("CHILD ")[1].split()[0])
        assert pid_alive(stack_pid) and pid_alive(child_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        wait_until(
            lambda: not pid_alive(stack_pid) and not pid_alive(child_pid),
            10,
            what="the stack and its child to end after the parent was killed",
        )
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
