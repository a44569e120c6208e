"""The GPU part of a run report: each case's measured VRAM against its profile, and for packed runs the
placements, the speed-up over sequential and GPU memory over time per GPU (``gpu_memory.svg``, drawn here
without a plotting dependency so every run directory has it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def vram_lines(records: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in records if isinstance(r.get("vram"), dict) and "peak_gib" in r["vram"]]
    if not rows:
        return []
    lines = [
        "## Measured VRAM",
        "",
        "| case | peak GiB | per GPU | profiled GiB | drift | samples (Hz) |",
        "|---|---:|---|---:|---|---:|",
    ]
    for r in rows:
        v = r["vram"]
        per_gpu = ", ".join(f"gpu{k}: {g}" for k, g in v.get("per_gpu_peak_gib", {}).items()) or "-"
        lines.append(
            f"| {r.get('case')} | {v['peak_gib']} | {per_gpu} | {v.get('profiled_vram_gib', '-')} | "
            f"{v.get('drift') or 'ok'} | {v.get('samples')} ({v.get('hz')}) |"
        )
    drifted = [r for r in rows if r["vram"].get("drift")]
    if drifted:
        lines += ["", f"{len(drifted)} case(s) drift from their profile: re-measure with `harness vram CASE_ID`."]
    return [*lines, ""]


def svg_timeline(timeline: dict[str, Any], placements: list[dict[str, Any]], width: int = 900) -> str:
    """Used GiB per GPU over time (one line each, capacity dashed), with each case's span under the plot."""
    t: list[float] = timeline.get("t") or [0.0]
    used: dict[str, list[float]] = timeline.get("used_gib") or {}
    total: dict[str, float] = timeline.get("total_gib") or {}
    top = max([*total.values(), *(max(v or [0.0]) for v in used.values()), 1.0])
    t_max = max(t[-1], max((p["end_s"] for p in placements), default=0.0), 1e-6)
    plot_h, lane_h, left, pad = 220, 14, 50, 10
    height = plot_h + pad * 3 + lane_h * len(placements) + 20

    def x(v: float) -> float:
        return left + (width - left - pad) * v / t_max

    def y(v: float) -> float:
        return pad + plot_h * (1 - v / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="10">',
        f'<text x="{left}" y="{pad - 1}">GPU memory used (GiB) over time (s); max {top:g} GiB</text>',
        f'<line x1="{left}" y1="{y(0)}" x2="{width - pad}" y2="{y(0)}" stroke="#000"/>',
        f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{y(top)}" stroke="#000"/>',
        f'<text x="2" y="{y(top) + 8}">{top:g}</text><text x="2" y="{y(0)}">0</text>',
        f'<text x="{width - pad - 40}" y="{y(0) + 12}">{t_max:.1f} s</text>',
    ]
    for n, (gpu, series) in enumerate(sorted(used.items(), key=lambda kv: int(kv[0]))):
        colour = COLOURS[n % len(COLOURS)]
        points = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(t, series, strict=False))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
        if gpu in total:
            parts.append(
                f'<line x1="{left}" y1="{y(total[gpu]):.1f}" x2="{width - pad}" y2="{y(total[gpu]):.1f}" '
                f'stroke="{colour}" stroke-dasharray="4 3"/>'
            )
        parts.append(f'<text x="{width - pad - 60}" y="{pad + 12 * (n + 1)}" fill="{colour}">gpu{gpu}</text>')
    base = plot_h + pad * 3
    for i, p in enumerate(placements):
        gpus = p.get("gpus") or []
        colour = COLOURS[(int(gpus[0]) if gpus else 7) % len(COLOURS)]
        y0 = base + i * lane_h
        parts.append(
            f'<rect x="{x(p["start_s"]):.1f}" y="{y0}" width="{max(1.0, x(p["end_s"]) - x(p["start_s"])):.1f}" '
            f'height="{lane_h - 3}" fill="{colour}" opacity="0.6"/>'
        )
        label = f"{p['case']} (gpu {','.join(map(str, gpus)) or '-'})"
        parts.append(f'<text x="{x(p["start_s"]) + 2:.1f}" y="{y0 + lane_h - 5}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def packing_lines(run_dir: Path) -> list[str]:
    """The packed-run section (empty for a sequential run); writes ``gpu_memory.svg`` beside the summary."""
    try:
        data = json.loads((run_dir / "packing.json").read_text())
    except (OSError, ValueError):
        return []
    placements = data.get("placements", [])
    (run_dir / "gpu_memory.svg").write_text(svg_timeline(data.get("timeline") or {}, placements))
    caps = ", ".join(f"gpu{g['index']}: {g['capacity_gib']:g} GiB" for g in data.get("gpus", []))
    pred = data.get("predicted") or {}
    lines = [
        "## GPU packing",
        "",
        f"{len(placements)} case(s) on {caps} ({data.get('source')}). Makespan **{data.get('makespan_s')} s** "
        f"against {data.get('sequential_s')} s of case time run one by one: speed-up **{data.get('speedup')}x**. "
        f"Predicted makespan {pred.get('makespan_s')} s; lower bound {pred.get('lower_bound_s')} s"
        + (f" (from {pred['bound']})" if pred.get("bound") else "")
        + (f"; dispatch rule: {pred['rule']}" if pred.get("rule") else "")
        + ".",
        "",
        "| case | gpus | reserved GiB | start s | end s | wall s | estimated s | attempts | rc |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in placements:
        lines.append(
            f"| {p['case']} | {','.join(map(str, p['gpus'])) or '-'} | {p['reserved_gib']:g} | {p['start_s']} | "
            f"{p['end_s']} | {p['wall_s']} | {p['estimated_s']:g} | {p['attempts']} | {p['rc']} |"
        )
    for reason in (data.get("refused") or {}).values():
        lines.append(f"\n- refused: {reason}")
    lines += ["", "GPU memory over time per GPU, and each case's span: `gpu_memory.svg`.", ""]
    if data.get("sampler_error"):
        lines.append(f"The sampler stopped early: {data['sampler_error']}")
    return lines


def gpu_section(run_dir: Path, records: list[dict[str, Any]]) -> str:
    lines = [*vram_lines(records), *packing_lines(run_dir)]
    return "\n" + "\n".join(lines) if lines else ""
