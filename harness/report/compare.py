"""``harness report A B``: two bench reports side by side, regressions beyond a threshold flagged.

Runs are matched by label (a policy, a sweep point); each metric has a direction. A relative change worse than
``threshold`` (10% by default) is a regression; error rate and hit rates, which are fractions, are judged by
their absolute change in points (``threshold`` x 100 points would be meaningless for a 0.5% error rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: (name, path into a run summary, higher is better, absolute (fraction) rather than relative)
METRICS: tuple[tuple[str, tuple[str, ...], bool, bool], ...] = (
    ("req/s", ("stats", "request_throughput"), True, False),
    ("goodput", ("stats", "goodput"), True, False),
    ("output tok/s", ("stats", "output_throughput"), True, False),
    ("TTFT p50 ms", ("stats", "ttft_ms", "p50"), False, False),
    ("TTFT p99 ms", ("stats", "ttft_ms", "p99"), False, False),
    ("TPOT p50 ms", ("stats", "tpot_ms", "p50"), False, False),
    ("E2E p50 ms", ("stats", "e2e_ms", "p50"), False, False),
    ("E2E p99 ms", ("stats", "e2e_ms", "p99"), False, False),
    ("error rate", ("stats", "error_rate"), False, True),
    ("achieved hit rate", ("triad", "achieved"), True, True),
    ("hotspot", ("hotspot_factor",), False, False),
)


@dataclass(frozen=True)
class Delta:
    run: str
    metric: str
    a: float | None
    b: float | None
    change: float | None  # relative (or absolute for fractions), signed so that negative is worse
    regression: bool


def _get(run: dict[str, Any], path: tuple[str, ...]) -> float | None:
    cur: Any = run
    for key in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(key)
    if cur is None or not isinstance(cur, (int, float)) or math.isnan(float(cur)):
        return None
    return float(cur)


def compare(a: dict[str, Any], b: dict[str, Any], threshold: float = 0.10) -> list[Delta]:
    runs_a = {r["label"]: r for r in a.get("runs", [])}
    out: list[Delta] = []
    for rb in b.get("runs", []):
        ra = runs_a.get(rb["label"])
        if ra is None:
            continue
        for name, path, higher, absolute in METRICS:
            va, vb = _get(ra, path), _get(rb, path)
            if va is None or vb is None:
                out.append(Delta(rb["label"], name, va, vb, None, False))
                continue
            if absolute:
                change = vb - va
            elif va == 0:
                change = 0.0 if vb == 0 else math.inf
            else:
                change = (vb - va) / abs(va)
            signed = change if higher else -change
            out.append(Delta(rb["label"], name, va, vb, signed, signed < -threshold))
    return out


def render(deltas: list[Delta], threshold: float) -> str:
    lines = [
        f"| run | metric | A | B | change | |  (threshold {threshold:.0%}; negative = worse)",
        "|---|---|---|---|---|---|",
    ]
    for d in deltas:
        fmt = "-" if d.change is None else f"{d.change:+.1%}"
        a = "-" if d.a is None else f"{d.a:,.4g}"
        b = "-" if d.b is None else f"{d.b:,.4g}"
        lines.append(f"| {d.run} | {d.metric} | {a} | {b} | {fmt} | {'**REGRESSION**' if d.regression else ''} |")
    n = sum(d.regression for d in deltas)
    lines.append("")
    lines.append(f"{n} regression(s) beyond {threshold:.0%}" if n else f"no regression beyond {threshold:.0%}")
    return "\n".join(lines)
