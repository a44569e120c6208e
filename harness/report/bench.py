"""Bench reports: ``reports/<ts>/`` with summary JSON (and provenance), per-request JSONL and CSV per run, a
Markdown summary and a self-contained HTML page.

Layout::

    summary.json   {"kind": "mmharness-bench", provenance, config, workload, runs: [...]}
    summary.md     one table over the runs (the --compare table), the triad, per-worker tables, warnings
    report.html    the same with plots (harness.report.html), images inlined
    runs/<label>/requests.jsonl   one record per request, appended as each finishes
    runs/<label>/requests.csv     the same as a table (pandas)

``BenchReport.write()`` is cheap and idempotent: the runner calls it after every run and again in ``finally``,
so a benchmark that errors or is interrupted still leaves a readable report of what it measured.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from harness.load.stats import RequestRecord

KIND = "mmharness-bench"


def safe_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label) or "run"


@dataclass
class BenchReport:
    root: Path
    provenance: dict[str, Any]
    config: dict[str, Any]
    workload: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str = "running"
    _streams: dict[str, IO[bytes]] = field(default_factory=dict)

    def run_dir(self, label: str) -> Path:
        path = self.root / "runs" / safe_label(label)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- per-request records --------------------------------------------------------------------------------
    def open_records(self, label: str) -> None:
        path = self.run_dir(label) / "requests.jsonl"
        self._streams[label] = open(path, "wb")  # noqa: SIM115 - closed by close_records

    def append_record(self, label: str, rec: RequestRecord) -> None:
        fh = self._streams.get(label)
        if fh is None:
            self.open_records(label)
            fh = self._streams[label]
        fh.write(orjson.dumps(rec.to_json(), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        fh.flush()

    def close_records(self, label: str, records: Sequence[RequestRecord] | None = None) -> None:
        """Close the stream; rewrite it complete and in request order when the final records are given (the
        stream only saw finished requests; the final list also has those cut off)."""
        fh = self._streams.pop(label, None)
        if fh is not None:
            fh.close()
        if records is None:
            return
        d = self.run_dir(label)
        with open(d / "requests.jsonl", "wb") as out:
            for rec in records:
                out.write(orjson.dumps(rec.to_json()) + b"\n")
        write_csv(d / "requests.csv", records)

    def add_run(self, summary: dict[str, Any]) -> None:
        self.runs = [r for r in self.runs if r.get("label") != summary.get("label")] + [summary]

    # -- the summary files -------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "version": 1,
            "status": self.status,
            "provenance": self.provenance,
            "config": self.config,
            "workload": self.workload,
            "runs": self.runs,
            "notes": self.notes,
        }

    def write(self, html: bool = True) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = self.to_json()
        (self.root / "summary.json").write_bytes(
            orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=_default)
        )
        (self.root / "summary.md").write_text(render_markdown(data))
        if html:
            from harness.report.html import write_html

            try:
                write_html(self.root, data)
            except Exception as exc:  # a plot must never cost the numbers
                (self.root / "report.html").write_text(f"<p>HTML report failed: {exc!r}</p>")

    def close(self) -> None:
        for label in list(self._streams):
            self.close_records(label)


def _default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(type(obj).__name__)


def write_csv(path: Path, records: Sequence[RequestRecord]) -> None:
    import pandas as pd  # type: ignore[import-untyped]

    rows = []
    for rec in records:
        row = rec.to_json()
        itl = row.pop("itl_s")
        row["itl_mean_s"] = sum(itl) / len(itl) if itl else None
        row["itl_max_s"] = max(itl) if itl else None
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)


def load_records(path: Path) -> list[RequestRecord]:
    out = []
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                out.append(RequestRecord.from_json(orjson.loads(line)))
    return out


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    data = orjson.loads(path.read_bytes())
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise ValueError(f"{path} is not a bench summary")
    return data


# -- Markdown ------------------------------------------------------------------------------------------------
def _f(v: Any, digits: int = 1, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if pct:
        return f"{v * 100:.{digits}f}%"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def table_rows(data: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for run in data.get("runs", []):
        s, t = run.get("stats", {}), run.get("triad", {})
        ttft, e2e, tpot = s.get("ttft_ms", {}), s.get("e2e_ms", {}), s.get("tpot_ms", {})
        rows.append(
            {
                "run": run.get("label", "?"),
                "req/s": _f(s.get("request_throughput")),
                "goodput": _f(s.get("goodput")),
                "TTFT p50 ms": _f(ttft.get("p50")),
                "TTFT p99 ms": _f(ttft.get("p99")),
                "TPOT p50 ms": _f(tpot.get("p50"), 2),
                "E2E p50 ms": _f(e2e.get("p50")),
                "out tok/s": _f(s.get("output_throughput"), 0),
                "theoretical": _f(t.get("theoretical"), pct=True),
                "oracle": _f(t.get("oracle"), pct=True),
                "achieved": _f(t.get("achieved"), pct=True),
                "/metrics": _f(t.get("achieved_metrics"), pct=True),
                "of oracle": _f(t.get("achieved_of_oracle"), pct=True),
                "hotspot": _f(run.get("hotspot_factor"), 2),
                "errors": f"{sum((s.get('errors') or {}).values())}/{s.get('requests', 0)}",
            }
        )
    return rows


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
    if not rows:
        return "_no runs_\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r.get(c, "") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_markdown(data: dict[str, Any]) -> str:
    prov = data.get("provenance", {})
    wl = data.get("workload", {})
    out = [f"# mmharness bench ({data.get('status')})", ""]
    argv = prov.get("argv")
    if argv:
        out += ["```", " ".join(argv), "```", ""]
    out.append(
        f"commit `{(prov.get('git_commit') or '?')[:12]}`{' (dirty)' if prov.get('git_dirty') else ''}, "
        f"seed {prov.get('seed')}, {prov.get('hardware', {}).get('cpu_count')} CPU(s), {prov.get('timestamp')}"
    )
    facts = wl.get("facts", {})
    if facts:
        out.append(
            f"workload: {facts.get('requests')} requests, {facts.get('images')} images "
            f"({facts.get('distinct_images')} distinct), theoretical hit rate {_f(wl.get('theoretical'), pct=True)}"
        )
    out += ["", markdown_table(table_rows(data))]
    out.append(
        "theoretical: one infinite cache; oracle: each request to the worker with its longest cached prefix, "
        "caches bounded by capacity; achieved: responses' cached_tokens over prompt_tokens (token-weighted); "
        "/metrics: the workers' prefix-cache counter deltas (warm-up included). hotspot: busiest worker's share "
        "x workers (1.00 = even). Latencies over successful requests; errors stay in the rates' denominators."
    )
    for run in data.get("runs", []):
        out += ["", f"## {run.get('label')}", ""]
        if run.get("description"):
            out.append(run["description"] + "\n")
        t = run.get("triad", {})
        out.append(
            "gaps: workload {}, capacity/sharding {}, routing {}".format(
                _f(t.get("gap_workload"), pct=True),
                _f(t.get("gap_capacity"), pct=True),
                _f(t.get("gap_routing"), pct=True),
            )
        )
        s = run.get("stats", {})
        if s.get("errors"):
            out.append("errors: " + ", ".join(f"{k} x{v}" for k, v in s["errors"].items()))
        if s.get("incomplete"):
            out.append(f"incomplete (cut off by the run's end): {s['incomplete']}")
        out.append(
            f"tokens/s: output {_f(s.get('output_throughput'), 0)}, total {_f(s.get('total_token_throughput'), 0)}, "
            f"image {_f(s.get('image_token_throughput'), 0)}, "
            f"text prompt {_f(s.get('text_prompt_token_throughput'), 0)}"
        )
        wrows = []
        for w in run.get("per_worker", []):
            wrows.append(
                {
                    "worker": str(w.get("name")),
                    "requests": str(w.get("requests")),
                    "share": _f(w.get("share"), pct=True),
                    "/metrics requests": _f(w.get("metrics_requests"), 0),
                    "hit rate": _f(w.get("hit_rate"), pct=True),
                    "/metrics hit rate": _f(w.get("metrics_hit_rate"), pct=True),
                    "TTFT p50 ms": _f(w.get("ttft_p50_ms")),
                    "E2E p50 ms": _f(w.get("e2e_p50_ms")),
                }
            )
        if wrows:
            out += ["", markdown_table(wrows)]
        if run.get("client_bound"):
            out.append(f"**warning: the client may have been the bottleneck: {run['client_bound']}**")
        if run.get("error"):
            out.append(f"**run ended early: {run['error']}**")
    for note in data.get("notes", []):
        out.append(f"\n> {note}")
    return "\n".join(out) + "\n"
