"""Summarise a run directory (``reports/<ts>/``): cases/*.json + junit.xml -> summary.md and run.json.

A gate case reads ``pass`` when it passed; a control reads ``rejected`` when the gate failed it as it must, and
``GOT THROUGH`` when it passed (the gate has no teeth: the run fails).
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
        return self.failed == 0 and self.controls_through == 0


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


def render_markdown(run_dir: Path, records: list[dict[str, Any]], title: str = "mmharness run") -> str:
    t = totals(records)
    status = "PASS" if t.green and t.cases else "FAIL"
    lines = [
        f"# {title}: {status}",
        "",
        f"{t.cases} case(s): {t.ok} as expected, {t.failed} failed; controls rejected {t.controls_rejected}, "
        f"controls that got through {t.controls_through}.",
        "",
        "| case | expect | verdict | boot s | checks s | KV hit rate | requests per worker | failed checks |",
        "|---|---|---|---:|---:|---:|---|---|",
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
            f"{len(failed)} |"
        )
    details = [r for r in records if _failed_checks(r) or r.get("error")]
    if details:
        lines += ["", "## Failed checks (controls are expected to have some)", ""]
        for r in details:
            lines.append(f"- **{r.get('case')}** ({verdict(r)})")
            lines += [f"  - {c}" for c in _failed_checks(r)]
            if r.get("error"):
                lines.append(f"  - setup error: `{str(r['error']).splitlines()[-1][:300]}`")
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


def write_summary(run_dir: Path, title: str = "mmharness run") -> RunTotals:
    from harness.report.gpu import gpu_section

    records = load_cases(run_dir)
    (run_dir / "summary.md").write_text(render_markdown(run_dir, records, title) + gpu_section(run_dir, records))
    t = totals(records)
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "totals": t.__dict__ | {"green": t.green},
                "junit": junit_counts(run_dir),
                "cases": records,
            },
            indent=2,
            default=str,
        )
    )
    return t
