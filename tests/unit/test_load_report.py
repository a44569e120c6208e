"""Bench reports: files written incrementally and on failure; `harness report A B` flags regressions."""

from __future__ import annotations

import copy

import orjson

from harness.load.stats import RequestRecord, run_stats
from harness.report.bench import BenchReport, load_records, load_summary, render_markdown
from harness.report.compare import compare, render


def run_summary(label: str, rps: float, ttft_p50: float, hit: float) -> dict:
    return {
        "label": label,
        "stats": {"request_throughput": rps, "ttft_ms": {"p50": ttft_p50}, "error_rate": 0.0, "errors": {},
                  "requests": 10},
        "triad": {"theoretical": 0.8, "oracle": 0.7, "achieved": hit},
        "per_worker": [{"name": "w0", "requests": 10, "share": 1.0}],
        "hotspot_factor": 1.0,
    }


def test_records_stream_to_disk_before_the_run_ends_and_summary_survives_an_error(tmp_path):
    report = BenchReport(tmp_path, {"seed": 1, "argv": ["harness", "bench"]}, {}, {"theoretical": 0.5})
    report.open_records("kv_mm")
    report.append_record("kv_mm", RequestRecord(index=0, sent_s=0.0, ttft_s=0.1, e2e_s=0.2, status=200))
    # readable while the run is still going (as after a crash)
    assert [r.index for r in load_records(tmp_path / "runs" / "kv_mm" / "requests.jsonl")] == [0]
    final = [RequestRecord(index=0, sent_s=0.0, ttft_s=0.1, e2e_s=0.2, status=200),
             RequestRecord(index=1, sent_s=0.1, error="interrupted")]
    report.close_records("kv_mm", final)
    report.add_run({"label": "kv_mm", "stats": run_stats(final).to_json(), "triad": {}, "error": "interrupted"})
    report.status = "interrupted"
    report.write()
    data = load_summary(tmp_path)
    assert data["status"] == "interrupted" and data["runs"][0]["error"] == "interrupted"
    assert (tmp_path / "runs" / "kv_mm" / "requests.csv").read_text().count("\n") == 3
    assert "run ended early: interrupted" in (tmp_path / "summary.md").read_text()
    html = (tmp_path / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "data:image/png;base64," in html


def test_compare_flags_regressions_beyond_the_threshold():
    a = {"runs": [run_summary("kv_mm", 100.0, 50.0, 0.70)]}
    b = copy.deepcopy(a)
    assert not any(d.regression for d in compare(a, b))
    b["runs"][0]["stats"]["request_throughput"] = 85.0  # -15%
    b["runs"][0]["stats"]["ttft_ms"]["p50"] = 54.0  # +8%: within 10%
    b["runs"][0]["triad"]["achieved"] = 0.55  # -15 points
    flagged = {d.metric for d in compare(a, b, 0.10) if d.regression}
    assert flagged == {"req/s", "achieved hit rate"}
    assert "REGRESSION" in render(compare(a, b), 0.10)


def test_markdown_has_the_table_and_per_worker_rows():
    data = {"status": "complete", "provenance": {"argv": ["harness", "bench", "x"]}, "workload": {},
            "runs": [run_summary("round_robin", 50.0, 90.0, 0.2), run_summary("kv_mm", 80.0, 30.0, 0.68)]}
    md = render_markdown(orjson.loads(orjson.dumps(data)))
    assert "| round_robin | 50.0 |" in md and "| kv_mm | 80.0 |" in md
    assert "| w0 | 10 | 100.0% |" in md
