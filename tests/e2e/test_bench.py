"""`harness bench` as a user runs it: a small --compare on 2 simulated workers, Ctrl-C, bad input."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from harness.stack.processes import pid_alive, spawn, wait_until

pytestmark = pytest.mark.e2e

CASE = "mm_agg_router_qwen3-vl-2b"
HARNESS = [sys.executable, "-m", "harness.cli"]


def bench(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, "bench", *args], capture_output=True, text=True, timeout=timeout)


def test_compare_shows_kv_mm_keeping_image_caches_and_writes_every_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    r = bench(
        CASE, "--compare", "round_robin,kv_mm", "--requests", "100", "--concurrency", "1", "--sim-speedup", "20",
        "--image-reuse", "0.5", "--output-len", "8", "--slo", "ttft=2s", "--no-progress",
        "--out", str(out),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    data = orjson.loads((out / "summary.json").read_bytes())
    assert data["kind"] == "mmharness-bench" and data["status"] == "complete"
    assert data["provenance"]["seed"] == 0 and "--compare" in data["provenance"]["argv"]
    runs = {run["label"]: run for run in data["runs"]}
    assert list(runs) == ["round_robin", "kv_mm", "direct"]
    for run in runs.values():
        s = run["stats"]
        assert s["requests"] == 100 and s["ok"] == 100, run
        assert {w["name"] for w in run["per_worker"]} == {"worker0", "worker1"}
        assert sum(w["requests"] for w in run["per_worker"]) == 100
        t = run["triad"]
        # client cached_tokens and the workers' own counters agree (no warm-up: the same requests)
        assert t["achieved_metrics"] == pytest.approx(t["achieved"], abs=0.01)
        assert t["oracle"] <= t["theoretical"] + 1e-9
        assert (out / "runs" / run["label"] / "requests.csv").is_file()
        lines = (out / "runs" / run["label"] / "requests.jsonl").read_bytes().splitlines()
        assert len(lines) == 100
    # the same seeded workload everywhere
    assert runs["kv_mm"]["triad"]["theoretical"] == runs["round_robin"]["triad"]["theoretical"]
    # one request at a time: kv_mm sends every repeat to the worker holding its image (the oracle's choice);
    # round robin sends a repeat to the other worker about half the time, and misses there
    assert runs["kv_mm"]["triad"]["achieved_of_oracle"] >= 0.95
    assert runs["kv_mm"]["triad"]["achieved"] > runs["round_robin"]["triad"]["achieved"] + 0.03
    assert "| kv_mm |" in (out / "summary.md").read_text()
    assert "data:image/png;base64," in (out / "report.html").read_text()
    same = subprocess.run([*HARNESS, "report", str(out), str(out)], capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and "no regression" in same.stdout


def test_ctrl_c_stops_the_run_tears_the_stack_down_and_still_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    log = tmp_path / "bench.log"
    proc = spawn(
        "bench",
        [*HARNESS, "bench", CASE, "--requests", "5000", "--image-pool", "10", "--concurrency", "2", "--no-progress",
         "--out", str(out)],
        log,
    )
    try:
        records = out / "runs" / "kv_mm" / "requests.jsonl"
        wait_until(
            lambda: records.is_file() and len(records.read_bytes().splitlines()) >= 5, 60, procs=[proc],
            what="the first records",
        )
        launch_log = next((out / "logs").glob("*/*.launch.log"))
        stack_pids = [int(m) for m in re.findall(r"started \S+ \(pid (\d+)\)", launch_log.read_text())]
        proc.popen.send_signal(signal.SIGINT)
        assert proc.popen.wait(60) == 130
        data = orjson.loads((out / "summary.json").read_bytes())
        assert data["status"] == "interrupted"
        (run,) = data["runs"]
        assert run["error"] == "interrupted" and 5 <= run["stats"]["ok"] < 5000
        assert (out / "report.html").is_file() and (out / "runs" / "kv_mm" / "requests.csv").is_file()
        wait_until(lambda: not any(pid_alive(p) for p in stack_pids), 15, what="the stack's processes to end")
    finally:
        proc.terminate()


def test_bad_input_names_the_flag_without_a_traceback(tmp_path: Path) -> None:
    for args, flag in (
        ([CASE, "--image-reuse", "2"], "--image-reuse"),
        ([CASE, "--slo", "latency=1s"], "--slo"),
        (["--url", "http://127.0.0.1:9", "--compare", "kv_mm"], "--compare"),
        ([CASE, "--compare", "kv_fancy"], "--compare"),
        ([CASE, "--mode", "open"], "--rate"),
        ([], "CASE_ID/--url"),
    ):
        r = bench(*args, "--out", str(tmp_path / "x"))
        assert r.returncode == 2, (args, r.stderr)
        assert flag in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_unreachable_url_records_connection_errors_and_fails(tmp_path: Path) -> None:
    r = bench("--url", "http://127.0.0.1:9", "--model", "Qwen/Qwen3-VL-2B-Instruct", "--requests", "5",
              "--no-progress", "--out", str(tmp_path / "r"))
    assert r.returncode == 1, r.stderr
    (run,) = orjson.loads((tmp_path / "r" / "summary.json").read_bytes())["runs"]
    assert run["stats"]["errors"] == {"connection": 5} and run["stats"]["error_rate"] == 1.0
