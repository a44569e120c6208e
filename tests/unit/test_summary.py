"""Run summaries: verdicts for gates and controls, totals, the Markdown table and the files a run directory gets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.report.summary import (
    RunTotals,
    junit_counts,
    load_cases,
    render_markdown,
    run_green,
    run_problems,
    totals,
    verdict,
    write_summary,
)


def record(case: str, expect: str, outcome: str | None, *, failed_checks: int = 0, **extra: Any) -> dict[str, Any]:
    checks = [
        {"name": "content", "verdict": "PASS", "expected": "a colour", "actual": "red", "request_id": f"{case}-0"}
    ]
    checks += [
        {
            "name": f"same_image_hits_{i}",
            "verdict": "FAIL",
            "expected": "cached_tokens >= 64",
            "actual": f"cached_tokens = {i}",
            "request_id": f"{case}-{i + 1}",
        }
        for i in range(failed_checks)
    ]
    r: dict[str, Any] = {
        "case": case,
        "model": "Qwen/Qwen3-VL-2B-Instruct",
        "topology": case.split("_qwen")[0].removeprefix("mm_"),
        "expect": expect,
        "marks": ["sim", "pre_merge"],
        "phases": {
            "boot_total": 1.234,
            "launch_workers": 0.012,
            "wait_workers": 0.9,
            "router": 0.3,
            "checks": 0.456,
            "teardown": 0.05,
        },
        "gate": {
            "passed": failed_checks == 0,
            "checks": checks,
            "requests": [],
            "kv_hit_rate": 0.75,
            "per_worker_requests": {"worker0": 3, "worker1": 1},
        },
        "duration_s": 2.0,
        **extra,
    }
    if outcome is not None:
        r["outcome"] = outcome
    return r


GATE_OK = record("mm_agg_router_qwen3-vl-2b", "pass", "passed")
GATE_BAD = record("mm_agg_router_qwen2-vl-2b", "pass", "failed", failed_checks=2)
CONTROL_REJECTED = record("mm_agg_router_kv_text_qwen3-vl-2b", "fail", "xfailed", failed_checks=1)
CONTROL_THROUGH = record("mm_agg_router_round_robin_qwen3-vl-2b", "fail", "xpassed")


# --- verdicts --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expect", "outcome", "expected"),
    [
        ("pass", "passed", "pass"),
        ("pass", "failed", "FAIL"),
        ("fail", "xfailed", "rejected"),
        ("fail", "xpassed", "GOT THROUGH"),
        ("fail", "passed", "error (passed)"),
        ("fail", "failed", "error (failed)"),
        ("pass", "xfailed", "error (xfailed)"),
        ("pass", "skipped", "error (skipped)"),
        ("pass", None, "error (error)"),
        ("fail", None, "error (error)"),
        ("pass", "interrupted", "error (interrupted)"),
        ("fail", "interrupted", "error (interrupted)"),  # an interrupted control was not rejected by the gate
    ],
)
def test_verdict(expect: str, outcome: str | None, expected: str) -> None:
    assert verdict(record("mm_x_y", expect, outcome)) == expected


# --- totals ----------------------------------------------------------------------------------------------------


def test_totals_all_as_expected_is_green() -> None:
    t = totals([GATE_OK, CONTROL_REJECTED])
    assert t == RunTotals(cases=2, ok=2, failed=0, controls_rejected=1, controls_through=0)
    assert t.green


def test_totals_failed_gate_is_red() -> None:
    t = totals([GATE_OK, GATE_BAD, CONTROL_REJECTED])
    assert (t.cases, t.ok, t.failed) == (3, 2, 1)
    assert not t.green


def test_totals_control_through_is_red_but_not_a_failure() -> None:
    t = totals([GATE_OK, CONTROL_THROUGH])
    assert (t.ok, t.failed, t.controls_through, t.controls_rejected) == (1, 0, 1, 0)
    assert not t.green


def test_totals_errors_count_as_failed() -> None:
    t = totals([GATE_OK, record("mm_a_b", "pass", None), record("mm_c_d", "fail", "failed")])
    assert (t.ok, t.failed) == (1, 2)
    assert not t.green


def test_totals_empty() -> None:
    t = totals([])
    assert t == RunTotals(0, 0, 0, 0, 0)
    assert not t.green  # a run that gated nothing proves nothing


# --- how the run ended -----------------------------------------------------------------------------------------

GREEN = totals([GATE_OK, CONTROL_REJECTED])
RED = totals([GATE_OK, GATE_BAD])


def test_clean_run_has_no_problems() -> None:
    assert run_problems(GREEN, {"exit_code": 0, "interrupted": None}) == []
    assert run_green(GREEN, {"exit_code": 0}) and run_green(GREEN, None)  # None: a run directory from before


@pytest.mark.parametrize(
    ("run", "problem"),
    [
        ({"exit_code": 2, "interrupted": "SIGINT"}, "interrupted by SIGINT"),
        ({"exit_code": 2}, "pytest exited with code 2 (interrupted)"),
        ({"exit_code": 3}, "pytest exited with code 3 (internal error)"),
        ({"exit_code": -9}, "pytest exited with code -9 (killed by signal 9)"),
        ({"exit_code": 1}, "pytest exited with code 1 (tests failed)"),  # failed, yet every case as expected
        ({"exit_code": 0, "interrupted": "SIGTERM"}, "interrupted by SIGTERM"),
    ],
)
def test_cases_as_expected_but_the_run_did_not_end_well_is_red(run: dict[str, Any], problem: str) -> None:
    problems = run_problems(GREEN, run)
    assert any(p.startswith(problem) for p in problems), problems
    assert not run_green(GREEN, run)


def test_failed_cases_are_not_listed_twice_as_an_exit_code() -> None:
    assert run_problems(RED, {"exit_code": 1}) == []  # the failed cases say it all
    assert not run_green(RED, {"exit_code": 1})


def test_empty_run_names_why() -> None:
    empty = totals([])
    assert run_problems(empty, None) == ["no case ran"]
    why = "no case selected: -m 'pre_mrege' matched none; marks that exist: pre_merge"
    assert run_problems(empty, {"exit_code": 5, "no_selection": why}) == [
        "pytest exited with code 5 (no tests collected)",
        why,
    ]
    md = render_markdown(Path("/r"), [], run={"exit_code": 5, "no_selection": why})
    assert md.splitlines()[:4] == ["# mmharness run: FAIL", "", "**pytest exited with code 5 (no tests collected)**",
                                   f"**{why}**"]  # fmt: skip


# --- Markdown --------------------------------------------------------------------------------------------------


def table_row(md: str, case: str) -> list[str]:
    rows = [line for line in md.splitlines() if line.startswith(f"| {case} | ")]
    assert rows, f"no row for {case}"
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_render_markdown_rows_and_failed_checks(tmp_path: Path) -> None:
    records = [GATE_OK, GATE_BAD, CONTROL_REJECTED, CONTROL_THROUGH]
    md = render_markdown(tmp_path, records, title="nightly")
    assert md.splitlines()[0] == "# nightly: FAIL"
    assert "4 case(s): 2 as expected, 1 failed; controls rejected 1, controls that got through 1." in md
    expected = {
        GATE_OK["case"]: ("pass", "pass", "0"),
        GATE_BAD["case"]: ("pass", "FAIL", "2"),
        CONTROL_REJECTED["case"]: ("fail", "rejected", "1"),
        CONTROL_THROUGH["case"]: ("fail", "GOT THROUGH", "0"),
    }
    for case, (expect, v, n_failed) in expected.items():
        row = table_row(md, case)
        assert row[1:3] == [expect, v]
        assert row[3:7] == ["1.234", "0.456", "0.75", "worker0: 3, worker1: 1"]
        assert row[7] == n_failed
    details = md.split("## Failed checks", 1)[1].split("## Phase timings", 1)[0]
    assert f"**{GATE_BAD['case']}** (FAIL)" in details
    assert f"**{CONTROL_REJECTED['case']}** (rejected)" in details
    assert "same_image_hits_1: expected cached_tokens >= 64; got cached_tokens = 1" in details
    assert GATE_OK["case"] not in details and CONTROL_THROUGH["case"] not in details
    assert "content:" not in details  # passing checks are not listed


def test_render_markdown_green_run(tmp_path: Path) -> None:
    md = render_markdown(tmp_path, [GATE_OK, CONTROL_REJECTED])
    assert md.splitlines()[0] == "# mmharness run: PASS"
    assert f"**{CONTROL_REJECTED['case']}** (rejected)" in md  # a control's failed checks are still shown


def test_render_markdown_no_cases_is_not_a_pass(tmp_path: Path) -> None:
    md = render_markdown(tmp_path, [])
    assert md.splitlines()[0] == "# mmharness run: FAIL"


def test_render_markdown_setup_error_and_missing_fields(tmp_path: Path) -> None:
    broken = {
        "case": "mm_agg_qwen3-vl-2b",
        "expect": "pass",
        "outcome": "failed",
        "error": "Traceback...\nharness.stack.launch.LaunchError: mm_agg_qwen3-vl-2b: stack did not come up: boom",
    }
    md = render_markdown(tmp_path, [broken])
    row = table_row(md, "mm_agg_qwen3-vl-2b")
    assert row[1:] == ["pass", "FAIL", "-", "-", "-", "-", "0", "0"]  # the last column: n/a checks
    assert "setup error: `harness.stack.launch.LaunchError: mm_agg_qwen3-vl-2b: stack did not come up: boom`" in md


def test_render_markdown_launch_error_shows_reason_component_and_log(tmp_path: Path) -> None:
    broken = record(
        "mm_agg_qwen3-vl-2b",
        "pass",
        "failed",
        error="LaunchError: mm_agg_qwen3-vl-2b: stack did not come up: worker1 exited with code 7 before it was ready",
        launch_error={
            "reason": "worker1 exited with code 7 before it was ready (log: /l/worker1.log)",
            "component": "worker1",
            "log_tail": "\n".join([f"line {i}" for i in range(30)] + ["torch.OutOfMemoryError: CUDA out of memory"]),
        },
    )
    del broken["gate"]
    md = render_markdown(tmp_path, [broken])
    details = md.split("## Failed checks", 1)[1].split("## Phase timings", 1)[0]
    assert "  - stack did not come up: worker1 exited with code 7 before it was ready (log: /l/worker1.log) " \
           "(component: worker1)" in details  # fmt: skip
    block = details.split("    ```\n", 1)[1].split("    ```", 1)[0].splitlines()
    assert len(block) == 15 and block[-1] == "    torch.OutOfMemoryError: CUDA out of memory"  # the last 15 lines
    assert "setup error" not in details


def test_render_markdown_phase_table(tmp_path: Path) -> None:
    md = render_markdown(tmp_path, [GATE_OK])
    phases = md.split("## Phase timings (s)", 1)[1]
    assert f"| {GATE_OK['case']} | 0.012 | 0.9 | 0.3 | 0.05 |" in phases
    assert f"`{tmp_path / 'logs'}`" in md


# --- files -----------------------------------------------------------------------------------------------------


def write_run(run_dir: Path, records: list[dict[str, Any]]) -> None:
    cases = run_dir / "cases"
    cases.mkdir(parents=True)
    for r in records:
        (cases / f"{r['case']}.json").write_text(json.dumps(r, indent=2))


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="12.3">
<testcase classname="tests.e2e.test_gates" name="test_gate[mm_agg_router_qwen3-vl-2b]" time="3.0"/>
</testsuite></testsuites>
"""


def test_write_summary_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    records = [CONTROL_THROUGH, GATE_OK, CONTROL_REJECTED, GATE_BAD]
    write_run(run_dir, records)
    (run_dir / "junit.xml").write_text(JUNIT)

    t = write_summary(run_dir, title="pre_merge")

    assert t == RunTotals(cases=4, ok=2, failed=1, controls_rejected=1, controls_through=1)
    md = (run_dir / "summary.md").read_text()
    assert md.startswith("# pre_merge: FAIL")
    for r in records:
        table_row(md, r["case"])
    run = json.loads((run_dir / "run.json").read_text())
    assert run["totals"] == {
        "cases": 4,
        "ok": 2,
        "failed": 1,
        "controls_rejected": 1,
        "controls_through": 1,
        "green": False,
    }
    assert run["junit"] == {"tests": 4, "failures": 1, "errors": 0, "skipped": 1}
    assert [c["case"] for c in run["cases"]] == sorted(r["case"] for r in records)  # by file name
    assert run["cases"][0]["gate"]["per_worker_requests"] == {"worker0": 3, "worker1": 1}


def test_write_summary_green_without_junit(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_run(run_dir, [GATE_OK, CONTROL_REJECTED])
    t = write_summary(run_dir)
    assert t.green
    run = json.loads((run_dir / "run.json").read_text())
    assert run["totals"]["green"] is True
    assert run["junit"] == {}
    assert (run_dir / "summary.md").read_text().startswith("# mmharness run: PASS")


def test_render_markdown_interrupted_case(tmp_path: Path) -> None:
    cut = {"case": "mm_x_m", "expect": "pass", "outcome": "interrupted", "error": "interrupted (pytest exit status 2)"}
    md = render_markdown(tmp_path, [GATE_OK, cut])
    assert table_row(md, "mm_x_m")[2] == "error (interrupted)"
    assert "- **mm_x_m** (error (interrupted))\n  - interrupted before it finished" in md
    assert md.startswith("# mmharness run: FAIL")


def test_write_summary_records_the_run_and_keeps_it_when_re_rendered(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_run(run_dir, [GATE_OK, CONTROL_REJECTED])
    info = {"exit_code": 2, "interrupted": "SIGINT", "command": ["harness", "run"], "started": "t0", "ended": "t1"}
    t = write_summary(run_dir, run=info)
    assert t.green  # the cases were as expected ...
    run = json.loads((run_dir / "run.json").read_text())
    assert run["run"] == info
    assert run["totals"]["green"] is False  # ... but the run was interrupted
    assert (run_dir / "summary.md").read_text().startswith("# mmharness run: FAIL\n\n**interrupted by SIGINT")
    assert "interrupted before it finished" not in (run_dir / "summary.md").read_text()  # its cases finished
    write_summary(run_dir)  # `harness report` re-renders without knowing how the run ended: it keeps that
    run = json.loads((run_dir / "run.json").read_text())
    assert run["run"] == info and run["totals"]["green"] is False


def test_load_cases_empty_run(tmp_path: Path) -> None:
    assert load_cases(tmp_path) == []


def test_junit_counts_single_suite_root(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text('<testsuite tests="2" failures="0" errors="1" skipped="0"/>')
    assert junit_counts(tmp_path) == {"tests": 2, "failures": 0, "errors": 1, "skipped": 0}
