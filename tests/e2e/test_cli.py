"""The `harness` command line as a user runs it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.stack.processes import pid_alive, spawn, wait_until
from tests.helpers import MODEL, data_url, image_message, png_bytes

pytestmark = pytest.mark.e2e


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
            "mm_agg_router_qwen3-vl-2b",
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        log,
    )
    try:
        wait_until(lambda: "Ctrl-C to stop." in log.read_text(), 60, procs=[proc], what="stack up")
        text = log.read_text()
        url = re.search(r"is up: (http://127\.0\.0\.1:\d+)", text).group(1)
        workers = re.search(r"workers: (.+)", text).group(1).split()
        assert len(workers) == 2
        r = httpx.post(
            f"{url}/v1/chat/completions",
            timeout=30,
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
        assert proc.popen.wait(30) == 0
        assert "stack stopped" in log.read_text()
        wait_until(lambda: not any(pid_alive(p) for p in stack_pids), 10, what="the stack's processes to end")
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
