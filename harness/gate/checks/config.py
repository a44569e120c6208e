"""Calibration checks: the reference against published values, and the stack against the reference.

The reference is what the gate's thresholds come from, so it is checked first: its formulas against published
token counts, then the stack's own numbers (calibration probes, the render endpoint) against it. A disagreement
is a failed ``config`` check naming both numbers; the stack's number is never taken in the reference's place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from harness.gate.checks import CheckResult, not_applicable
from harness.gate.oracle import ANCHORS, anchor_problems
from harness.mm.families import Family

ANCHOR = "reference image-token formula matches published counts"
PROBE_IMAGE = "stack's image-token count (probe) matches the reference"
RENDER = "stack's render endpoint matches the reference"
PROBE_PREFIX = "stack's template prefix (probe) matches the reference"
WORKER_BLOCK = "workers run the declared block size"


def reference_anchors(family: Family) -> CheckResult:
    if family.name not in ANCHORS:
        return not_applicable(ANCHOR, f"no published counts pinned for family {family.name}", "config")
    problems = anchor_problems(family)
    n = len(ANCHORS[family.name])
    return CheckResult(
        ANCHOR,
        not problems,
        f"{family.name} at hub defaults gives the {n} published counts",
        "; ".join(problems) or "all agree",
        "config",
        source="reference",
    )


def image_tokens_agree(name: str, reference: int, stack: int | None, how: str, source: str) -> CheckResult:
    """One image's placeholder count: the reference (declared geometry) against the stack's ``how``."""
    if stack is None:
        return not_applicable(name, f"the stack offers no {how}", "config", f"{reference} tokens (reference)")
    return CheckResult(
        name,
        stack == reference,
        f"{reference} tokens per image (reference: family formula, declared processor settings)",
        f"{stack} tokens ({how})",
        "config",
        source=source,
    )


def render_agrees(reference: Sequence[tuple[int, int]], rendered: Sequence[tuple[int, int]] | None) -> CheckResult:
    """The render endpoint's (offset, length) per image against the reference layout."""
    if rendered is None:
        return not_applicable(RENDER, "the worker has no render endpoint", "config", f"{list(reference)}")
    return CheckResult(
        RENDER,
        list(rendered) == list(reference),
        f"image placeholders (offset, length) {list(reference)} (reference)",
        f"{list(rendered)} (stack render)",
        "config",
        source="stack render",
    )


def template_prefix_agrees(reference: int, probed: int | None) -> CheckResult:
    if probed is None:
        return not_applicable(PROBE_PREFIX, "the worker has no /tokenize endpoint", "config", f"{reference} tokens")
    return CheckResult(
        PROBE_PREFIX,
        probed == reference,
        f"{reference} shared template tokens (reference template)",
        f"{probed} tokens (probe: /tokenize of two chats differing in their first user text)",
        "config",
        source="probe",
    )


def workers_block_size(declared: int, workers: Mapping[str, tuple[int | None, str]]) -> CheckResult:
    known = {n: v for n, v in workers.items() if v[0] is not None}
    if not known:
        return not_applicable(WORKER_BLOCK, "no worker reports its block size", "config", str(declared))
    bad = [f"{n}={v} ({src})" for n, (v, src) in known.items() if v != declared]
    return CheckResult(
        WORKER_BLOCK,
        not bad,
        f"block_size {declared} on every worker (declared by the topology)",
        "; ".join(bad) or ", ".join(f"{n}={v} ({src})" for n, (v, src) in known.items()),
        "config",
        source=", ".join(sorted({src for _, src in known.values()})),
    )
