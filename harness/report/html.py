"""The bench report as one self-contained HTML page: tables plus matplotlib plots inlined as base64 PNGs.

Plots: latency CDFs (TTFT and E2E per run), TTFT against load (achieved req/s on x: a sweep's curve, or one
point per compared router), the hit-rate triad per run, and per-worker load over time (requests finished per
second by each worker) for every run.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from harness.load.stats import RequestRecord, load_over_time
from harness.report.bench import load_records, render_markdown, safe_label, table_rows


def _figure_png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _records(root: Path, label: str) -> list[RequestRecord]:
    path = root / "runs" / safe_label(label) / "requests.jsonl"
    try:
        return load_records(path)
    except (OSError, ValueError):
        return []


def plots(root: Path, data: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data.get("runs", [])
    recs = {r["label"]: _records(root, r["label"]) for r in runs}
    out: list[tuple[str, str]] = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric, title in ((axes[0], "ttft_s", "TTFT"), (axes[1], "e2e_s", "E2E latency")):
        for label, rs in recs.items():
            vals = np.sort([getattr(r, metric) * 1000 for r in rs if r.counted and r.ok and getattr(r, metric)])
            if vals.size:
                ax.plot(vals, np.arange(1, vals.size + 1) / vals.size, label=label)
        ax.set_xlabel(f"{title} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{title} CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    out.append(("Latency CDFs", _figure_png(fig)))

    fig, ax = plt.subplots(figsize=(6, 3.8))
    xs = [r["stats"].get("request_throughput") or 0 for r in runs]
    for q in ("p50", "p99"):
        ys = [(r["stats"].get("ttft_ms") or {}).get(q) for r in runs]
        ax.plot(xs, [y if y is not None else np.nan for y in ys], marker="o", label=f"TTFT {q}")
    for x, r in zip(xs, runs, strict=True):
        ax.annotate(r["label"], (x, (r["stats"].get("ttft_ms") or {}).get("p50") or 0), fontsize=7)
    ax.set_xlabel("achieved requests/s")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title("TTFT against load")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.append(("TTFT against load", _figure_png(fig)))

    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(runs) + 2), 3.8))
    width = 0.2
    idx = np.arange(len(runs))
    for k, (key, name) in enumerate(
        (
            ("theoretical", "theoretical"),
            ("oracle", "oracle"),
            ("achieved", "achieved"),
            ("achieved_metrics", "/metrics"),
        )
    ):
        heights = [((r.get("triad") or {}).get(key) or 0) * 100 for r in runs]
        ax.bar(idx + (k - 1.5) * width, heights, width, label=name)
    ax.set_xticks(idx, [r["label"] for r in runs], rotation=20, fontsize=8)
    ax.set_ylabel("prompt tokens served from cache (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Hit-rate triad per run")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    out.append(("Hit-rate triad", _figure_png(fig)))

    for label, rs in recs.items():
        series = load_over_time(rs, 1.0)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(8, 3))
        for worker, points in sorted(series.items()):
            ax.plot([p[0] for p in points], [p[1] for p in points], label=worker, drawstyle="steps-post")
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("requests finished / s")
        ax.set_title(f"Per-worker load over time: {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out.append((f"Per-worker load: {label}", _figure_png(fig)))
    return out


def _html_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p><em>no runs</em></p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html(root: Path, data: dict[str, Any]) -> Path:
    figs = plots(root, data)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mmharness bench</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:12px}",
        "</style></head><body><h1>mmharness bench</h1>",
        _html_table(table_rows(data)),
    ]
    for title, png in figs:
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    parts.append("<h2>Summary</h2><pre>" + html.escape(render_markdown(data)) + "</pre></body></html>")
    path = root / "report.html"
    path.write_text("".join(parts))
    return path
