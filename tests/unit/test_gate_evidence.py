"""Evidence rules: required checks from capabilities; a required n/a fails as insufficient evidence."""

from __future__ import annotations

from harness.gate.checks import CheckResult
from harness.gate.evidence import insufficient, na_summary, required_checks
from harness.profiles import RouterCapabilities


def test_required_follows_capabilities() -> None:
    proxy = required_checks(
        RouterCapabilities(records="harness", startup_line=True),
        workers=2,
        has_router=True,
        adapter=False,
        family_anchored=True,
    )
    assert {
        "router does not claim the new image's blocks",
        "router and workers agree on the block size",
        "different images spread under load",
        "repeat co-locates",
    } <= proxy
    plain = required_checks(RouterCapabilities(), workers=2, has_router=True, adapter=False, family_anchored=False)
    assert "router does not claim the new image's blocks" not in plain and "repeat co-locates" in plain
    blind = required_checks(
        RouterCapabilities(attribution=()), workers=2, has_router=True, adapter=False, family_anchored=False
    )
    assert "repeat co-locates" not in blind
    lora = required_checks(RouterCapabilities(), workers=2, has_router=True, adapter=True, family_anchored=False)
    assert "different images spread under load" not in lora
    forgets = "router forgets blocks the workers evicted"
    assert forgets not in proxy  # a router that only predicts cannot see evictions
    fed = RouterCapabilities(records="harness", startup_line=True, kv_events=True)
    assert forgets in required_checks(fed, workers=1, has_router=True, adapter=False, family_anchored=False)
    mocker = RouterCapabilities(records="harness", kv_events=True, workers_serve_openai=False)
    assert forgets not in required_checks(mocker, workers=2, has_router=True, adapter=False, family_anchored=False)


def test_insufficient_evidence() -> None:
    checks = [
        CheckResult("a", True, "-", "-"),
        CheckResult("b", None, "-", "no header"),
        CheckResult("c", None, "-", "single worker"),
    ]
    out = insufficient(checks, {"a", "b", "d"})
    assert [c.name for c in out] == ["insufficient evidence: b", "insufficient evidence: d"]
    assert all(c.passed is False and c.kind == "evidence" for c in out)
    assert "no header" in out[0].actual and out[1].actual == "never ran"
    assert insufficient(checks, {"a"}) == []
    assert na_summary(checks) == [{"name": "b", "reason": "no header"}, {"name": "c", "reason": "single worker"}]


def test_required_for_an_image_blind_engine_without_worker_metrics() -> None:
    """Dynamo's mockers: the engine's numbers cannot judge images and its /metrics have no vllm:* counters, so
    the checks resting on them are not required; the record checks against the reference are."""
    seeing = required_checks(
        RouterCapabilities(records="dynamo", startup_line=True), workers=2, has_router=True, adapter=False,
        family_anchored=True,
    )
    mocker = required_checks(
        RouterCapabilities(records="dynamo", startup_line=True, engine_sees_images=False, worker_metrics=False),
        workers=2, has_router=True, adapter=False, family_anchored=True,
    )
    engine_side = {
        "stack's image-token count (probe) matches the reference",
        "router keys the whole prompt as the workers expand it",
        "router's claimed overlap does not exceed the worker's cache",
        "/metrics prefix-cache hits match responses",
    }
    records = {
        "router claims the repeat's blocks on the first's worker",
        "router claims the same image sent by the other transport",
        "router claims the concurrent repeats' blocks on the first's worker",
    }
    assert engine_side <= seeing and not engine_side & mocker
    assert records <= seeing and records <= mocker
    assert "router keys the whole prompt as the reference expands it" in mocker - seeing
    single = required_checks(
        RouterCapabilities(records="harness"), workers=1, has_router=True, adapter=False, family_anchored=True
    )
    assert "router claims the concurrent repeats' blocks on the first's worker" not in single  # no burst step
