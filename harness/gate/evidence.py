"""Evidence rules: which checks a topology must produce, and what an n/a among them means.

A topology declares its router's capabilities (``harness.profiles.RouterCapabilities``); from them follow the
checks the gate *must* be able to judge. One of those that comes back n/a does not pass: the case fails as
"insufficient evidence", naming the check and its reason. Checks outside the required set may be n/a (a single
worker has nothing to co-locate); their count and reasons are still reported per case.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.gate.checks import CheckResult
from harness.gate.checks import config as cfg
from harness.gate.checks import routing as rt
from harness.profiles import RouterCapabilities

COLOCATES = "repeat co-locates"
STAYS_HOME = "repeats stay on the cached worker under load"
SPREADS = "different images spread under load"
METRICS_HITS = "/metrics prefix-cache hits match responses"


def required_checks(
    caps: RouterCapabilities, *, workers: int, has_router: bool, adapter: bool, family_anchored: bool
) -> set[str]:
    """The checks a stack with these capabilities must produce (pass or fail, never n/a)."""
    need: set[str] = set()
    if caps.worker_metrics:  # Dynamo's mockers export no vllm:* counters (declared)
        need.add(METRICS_HITS)
    if caps.engine_sees_images:  # an image-blind engine's prompt_tokens count no image tokens to probe
        need.add(cfg.PROBE_IMAGE)
    if family_anchored:
        need.add(cfg.ANCHOR)
    if has_router and workers > 1 and caps.attribution:
        need |= {COLOCATES, STAYS_HOME}
        if not adapter:  # adapter affinity keeps one adapter's requests together on purpose
            need.add(SPREADS)
    if has_router and caps.records:
        need |= {rt.SPARES_NEW_IMAGE, rt.REPEAT_CLAIMS, rt.TRANSPORT_CLAIMS}
        # The router's expansion and claims against the engine's numbers where the engine counts images, else
        # against the reference (the n/a rule of ``IMAGE_BLIND``).
        need |= {rt.COVERS_PROMPT, rt.CLAIMS_MATCH} if caps.engine_sees_images else {rt.REF_COVERS}
        if workers > 1:
            need.add(rt.BURST_CLAIMS)
    if has_router and caps.startup_line:
        need |= {rt.STARTUP, rt.BLOCK_SIZE}
    if has_router and caps.records and caps.kv_events and caps.workers_serve_openai:
        need.add(rt.FORGETS)  # the eviction is made by POST /reset_prefix_cache on the workers' own URLs
    return need


def insufficient(checks: Sequence[CheckResult], required: set[str]) -> list[CheckResult]:
    """A failing ``evidence`` check for every required check that is n/a or was never produced."""
    seen: dict[str, list[CheckResult]] = {}
    for c in checks:
        seen.setdefault(c.name, []).append(c)
    out = []
    for name in sorted(required):
        results = seen.get(name, [])
        if not results:
            out.append(CheckResult(f"insufficient evidence: {name}", False, "the check ran", "never ran", "evidence"))
        elif all(c.passed is None for c in results):
            out.append(
                CheckResult(
                    f"insufficient evidence: {name}",
                    False,
                    "a pass or a fail (the topology's capabilities require this check)",
                    f"n/a: {results[0].actual}",
                    "evidence",
                )
            )
    return out


def na_summary(checks: Sequence[CheckResult]) -> list[dict[str, str]]:
    """Every n/a with its reason, for the case record, the summary and JUnit."""
    return [{"name": c.name, "reason": c.actual} for c in checks if c.passed is None]
