"""Summarise a run directory (``reports/<ts>/``): cases/*.json + junit.xml -> summary.md and run.json.

A gate case reads ``pass`` when it passed; a control reads ``rejected`` when the gate failed it as it must, and
``GOT THROUGH`` when it passed (the gate has no teeth: the run fails). A run is green only when it ran at least
one case, every case is as expected and pytest itself exited 0: an empty, interrupted or killed run is red.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunTotals:
    cases: int
    ok: int
    failed: int
    controls_rejected: int
    controls_through: int

    @property
    def green(self) -> bool:
        """Every case as expected, and at least one case: a run that gated nothing proves nothing."""
        return self.cases > 0 and self.failed == 0 and self.controls_through == 0


#: pytest's exit codes (``pytest.ExitCode``), for the report; a negative code is the signal that killed it.
EXIT_MEANINGS = {
    1: "tests failed",
    2: "interrupted",
    3: "internal error",
    4: "usage error",
    5: "no tests collected",
}


def run_problems(t: RunTotals, run: dict[str, Any] | None) -> list[str]:
    """Why a run is red beyond its cases' verdicts: no case ran, pytest did not exit 0, the run was interrupted.
    ``run`` is run.json's ``run`` object (None for a run directory written without one)."""
    run = run or {}
    problems = []
    if run.get("interrupted"):
        problems.append(f"interrupted by {run['interrupted']}: cases that did not finish are missing or errors")
    code = run.get("exit_code")
    if code not in (None, 0) and not (code == 1 and t.cases and not t.green):  # 1 = the failures listed below
        meaning = f"killed by signal {-code}" if code < 0 else EXIT_MEANINGS.get(code, "unknown exit code")
        problems.append(f"pytest exited with code {code} ({meaning})")
    if t.cases == 0:
        problems.append(run.get("no_selection") or "no case ran")
    return problems


def run_green(t: RunTotals, run: dict[str, Any] | None) -> bool:
    return t.green and not run_problems(t, run)


def load_cases(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "cases").glob("*.json"))]


def verdict(record: dict[str, Any]) -> str:
    outcome = record.get("outcome", "error")
    if record.get("expect") == "fail":
        return {"xfailed": "rejected", "xpassed": "GOT THROUGH"}.get(outcome, f"error ({outcome})")
    return {"passed": "pass", "failed": "FAIL"}.get(outcome, f"error ({outcome})")


def totals(records: list[dict[str, Any]]) -> RunTotals:
    v = [verdict(r) for r in records]
    return RunTotals(
        cases=len(v),
        ok=sum(x in ("pass", "rejected") for x in v),
        failed=sum(x == "FAIL" or x.startswith("error") for x in v),
        controls_rejected=v.count("rejected"),
        controls_through=v.count("GOT THROUGH"),
    )


def junit_counts(run_dir: Path) -> dict[str, int]:
    path = run_dir / "junit.xml"
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _failed_checks(record: dict[str, Any]) -> list[str]:
    gate = record.get("gate") or {}
    return [
        f"{c['name']}: expected {c['expected']}; got {c['actual']}"
        for c in gate.get("checks", [])
        if c["verdict"] == "FAIL"
    ]


def render_markdown(
    run_dir: Path, records: list[dict[str, Any]], title: str = "mmharness run", run: dict[str, Any] | None = None
) -> str:
    t = totals(records)
    problems = run_problems(t, run)
    status = "PASS" if t.green and not problems else "FAIL"
    lines = [
        f"# {title}: {status}",
        "",
        *[f"**{p}**" for p in problems],
        *([""] if problems else []),
        f"{t.cases} case(s): {t.ok} as expected, {t.failed} failed; controls rejected {t.controls_rejected}, "
        f"controls that got through {t.controls_through}.",
        "",
        "| case | expect | verdict | boot s | checks s | KV hit rate | requests per worker | failed checks | n/a |",
        "|---|---|---|---:|---:|---:|---|---|---:|",
    ]
    for r in records:
        phases = r.get("phases") or {}
        gate = r.get("gate") or {}
        rate = gate.get("kv_hit_rate")
        per_worker = ", ".join(f"{k}: {v}" for k, v in (gate.get("per_worker_requests") or {}).items())
        failed = _failed_checks(r)
        lines.append(
            f"| {r.get('case')} | {r.get('expect')} | {verdict(r)} | {phases.get('boot_total', '-')} | "
            f"{phases.get('checks', '-')} | {'-' if rate is None else f'{rate:.2f}'} | {per_worker or '-'} | "
            f"{len(failed)} | {len(gate.get('not_applicable') or [])} |"
        )
    na_rows = [(r.get("case"), (r.get("gate") or {}).get("not_applicable") or []) for r in records]
    if any(na for _, na in na_rows):  # n/a is never a pass: each one says why the check did not apply
        lines += ["", "## Not applicable checks (with reasons)", ""]
        for case, na in na_rows:
            if na:
                lines.append(f"- **{case}**: " + "; ".join(f"{n['name']}: {n['reason']}" for n in na))
    details = [r for r in records if _failed_checks(r) or r.get("error")]
    if details:
        lines += ["", "## Failed checks (controls are expected to have some)", ""]
        for r in details:
            lines.append(f"- **{r.get('case')}** ({verdict(r)})")
            lines += [f"  - {c}" for c in _failed_checks(r)]
            lines += _error_lines(r)
    phase_rows = [(r.get("case"), r.get("phases") or {}) for r in records]
    lines += [
        "",
        "## Phase timings (s)",
        "",
        "| case | launch workers | wait workers | router | teardown |",
        "|---|---:|---:|---:|---:|",
    ]
    for case, p in phase_rows:
        lines.append(
            f"| {case} | {p.get('launch_workers', '-')} | {p.get('wait_workers', '-')} | "
            f"{p.get('router', '-')} | {p.get('teardown', '-')} |"
        )
    lines += ["", f"Logs: `{run_dir / 'logs'}`; per-case records: `{run_dir / 'cases'}`.", ""]
    return "\n".join(lines)


def _error_lines(record: dict[str, Any]) -> list[str]:
    """A case that never reached its checks: a stack that did not come up shows its reason, the failing component
    and the end of that component's log; any other error its one-line message."""
    launch = record.get("launch_error")
    if isinstance(launch, dict):
        out = [f"  - stack did not come up: {launch.get('reason', '?')} (component: {launch.get('component', '?')})"]
        log_tail = str(launch.get("log_tail") or "").splitlines()[-15:]
        if log_tail:
            out += ["", "    ```", *[f"    {line}" for line in log_tail], "    ```", ""]
        return out
    if record.get("outcome") == "interrupted":
        return ["  - interrupted before it finished (the run was cut short)"]
    error = str(record.get("error") or "").strip()
    if not error:
        return []
    return [f"  - setup error: `{error.splitlines()[-1][:300]}`"]


def previous_run_info(run_dir: Path) -> dict[str, Any] | None:
    """The ``run`` object of an existing run.json, so that re-rendering a run keeps how it ended."""
    try:
        run = json.loads((run_dir / "run.json").read_text()).get("run")
    except (OSError, ValueError, AttributeError):
        return None
    return run if isinstance(run, dict) else None


def write_summary(run_dir: Path, title: str = "mmharness run", run: dict[str, Any] | None = None) -> RunTotals:
    """summary.md and run.json from the case records. ``run`` (how the run was started and ended: exit code,
    command line, commit, versions, times) goes into run.json and decides, with the cases, whether it is green;
    without one, an existing run.json's is kept."""
    from harness.report.gpu import gpu_section

    if run is None:
        run = previous_run_info(run_dir)
    records = load_cases(run_dir)
    md = render_markdown(run_dir, records, title, run)
    (run_dir / "summary.md").write_text(md + gpu_section(run_dir, records))
    t = totals(records)
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "run": run,
                "totals": t.__dict__ | {"green": run_green(t, run)},
                "junit": junit_counts(run_dir),
                "cases": records,
            },
            indent=2,
            default=str,
        )
    )
    return t
