"""URL mode: stacks started by hand (``harness stack up --port --profile-dir --launch-dir``, and one booted in this
process) gated with ``harness run --url``, capabilities given on the command line. The working router passes;
a round-robin router told to pass is rejected on a routing check (the failing branch)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.profiles import default_launch_dir, default_profile_dir, find_case, load_profiles
from harness.stack.launch import launched
from harness.stack.ports import allocate_ports, release_ports

pytestmark = pytest.mark.e2e
HARNESS = [sys.executable, "-m", "harness.cli"]


def harness_run(tmp: Path, *args: str) -> tuple[int, dict[str, object], str]:
    reports = tmp / "reports"
    r = subprocess.run([*HARNESS, "run", "--reports-dir", str(reports), *args, "-n", "0", "-q"],
                       capture_output=True, text=True, timeout=180, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    cases = list((reports / "latest" / "cases").glob("*.json"))
    assert len(cases) == 1, r.stdout[-3000:] + r.stderr[-3000:]
    return r.returncode, json.loads(cases[0].read_text()), r.stdout + r.stderr


def worker_flags(urls: list[str]) -> list[str]:
    return [flag for url in urls for flag in ("--worker-url", url)]


def test_stacks_started_by_hand_gated_by_url(tmp_path: Path) -> None:
    (port,) = allocate_ports(1)
    release_ports([port])  # for `stack up --port`: free, and ours to pass on
    logs = tmp_path / "up-logs"
    up = subprocess.Popen(
        [*HARNESS, "stack", "up", "--profile", "mm_agg_router_qwen3-vl-2b", "--port", str(port), "--log-dir",
         str(logs), "--profile-dir", str(default_profile_dir()), "--launch-dir", str(default_launch_dir())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    control = find_case(load_profiles(default_profile_dir()), "mm_agg_router_round_robin_qwen3-vl-2b")
    try:
        with launched(control, tmp_path / "control-logs") as rr:  # boots while `stack up` boots
            assert up.stdout is not None
            out = ""
            deadline = time.monotonic() + 120
            while "Ctrl-C to stop" not in out and up.poll() is None and time.monotonic() < deadline:
                out += up.stdout.readline()
            assert f"is up: http://127.0.0.1:{port}" in out, out
            workers = re.search(r"workers: (.*)", out)
            assert workers is not None
            router_log = next(logs.glob("*.router.log"))

            rc, record, text = harness_run(
                tmp_path / "good", "--url", f"http://127.0.0.1:{port}", *worker_flags(workers.group(1).split()),
                "--records", "harness", "--router-log", str(router_log), "--startup-line",
            )
            assert rc == 0, text[-4000:]
            assert record["outcome"] == "passed" and record["case"] == "mm_url_qwen3-vl-2b-instruct"
            passed = {c["name"] for c in record["gate"]["checks"] if c["verdict"] == "pass"}  # type: ignore[index]
            assert "repeat co-locates" in passed

            rc, record, text = harness_run(
                tmp_path / "bad", "--url", rr.url, *worker_flags(rr.worker_urls),
                "--records", "harness", "--router-log", str(rr.log_path("router")), "--startup-line",
            )
            assert rc != 0, text[-4000:]
            assert record["outcome"] == "failed"
            failed = [c for c in record["gate"]["checks"] if c["verdict"] == "FAIL"]  # type: ignore[index]
            assert any(c["kind"] == "routing" for c in failed), failed
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGINT)  # `stack up` tears its stack down on Ctrl-C
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait(10)


def test_url_mode_names_the_bad_flag(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*HARNESS, "run", "--reports-dir", str(tmp_path), *args], capture_output=True,
                              text=True, timeout=60)

    r = run("--url", "not-a-url", "--model", "m")
    assert r.returncode == 2 and "--url" in r.stderr and "Traceback" not in r.stderr
    r = run("--url", "http://127.0.0.1:9", "--model", "m", "--records", "xml")
    assert r.returncode == 2 and "--records" in r.stderr
    r = run("--url", "http://127.0.0.1:9", "--model", "m", "--attribution", "telepathy")
    assert r.returncode == 2 and "--attribution" in r.stderr
    (port,) = allocate_ports(1)
    release_ports([port])
    r = run("--url", f"http://127.0.0.1:{port}")  # nothing listens: no model can be discovered
    assert r.returncode == 2 and "--model" in r.stderr
