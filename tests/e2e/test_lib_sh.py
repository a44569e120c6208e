"""launch/lib.sh on its own: phase 2 fails fast on whichever component dies first, and scripts run standalone
(no launcher) allocate their own ports and leave nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.stack.processes import pid_alive, spawn, wait_until

pytestmark = pytest.mark.e2e

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


def test_wait_all_ready_names_the_first_component_to_die(tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text(
        f"source {LAUNCH / 'lib.sh'}\n"
        "spawn slow sleep 300\n"
        "spawn doomed sh -c 'sleep 0.3; exit 7'\n"
        'wait_all_ready http://127.0.0.1:1/health "${PIDS[0]}" slow http://127.0.0.1:1/health "${PIDS[1]}" doomed\n'
    )
    env = {"PATH": os.environ["PATH"], "HARNESS_LOG_DIR": str(tmp_path), "HARNESS_READY_TIMEOUT": "60"}
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1
    assert "HARNESS_FAILED doomed exited with code 7 before it was ready" in proc.stdout
    assert elapsed < 30  # decided by the death, not by the 60 s deadline of the component still starting


def test_standalone_script_allocates_ports_and_cleans_up(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HARNESS_MODEL": "Qwen/Qwen3-VL-2B-Instruct",
        "HARNESS_KV_CACHE_BYTES": str(2 * 1024**3),
        "HARNESS_NUM_WORKERS": "2",
        "HARNESS_ROUTER": "proxy",
        "HARNESS_LOG_DIR": str(tmp_path),
        "HARNESS_PYTHON": sys.executable,
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("HARNESS_WORKER_PORTS", None)
    env.pop("HARNESS_HTTP_PORT", None)
    proc = spawn("standalone", ["bash", str(LAUNCH / "agg_router.sh")], tmp_path / "launch.log", env=env)
    try:
        wait_until(
            lambda: "HARNESS_READY url=http://127.0.0.1:" in (tmp_path / "launch.log").read_text(),
            60,
            procs=[proc],
            what="standalone stack",
        )
        children = [
            int(line.split("pid ")[1].split(")")[0])
            for line in (tmp_path / "launch.log").read_text().splitlines()
            if line.startswith("[launch] started ")
        ]
        assert len(children) == 3 and all(pid_alive(p) for p in children)
        os.kill(proc.pid, signal.SIGTERM)  # the script alone, as a user's Ctrl-C / kill would
        wait_until(lambda: not any(pid_alive(p) for p in [proc.pid, *children]), 20, what="script and components")
    finally:
        proc.terminate()
