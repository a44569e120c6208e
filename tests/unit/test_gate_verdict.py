"""How a gate's checks become a verdict: only a failed *routing* check rejects a control."""

from __future__ import annotations

import pytest

from harness.gate.checks import CheckResult
from harness.gate.scenario import GateBroken, GateResult


def result(*failed_kinds: str) -> GateResult:
    checks = [CheckResult("ok", True, "-", "-", "health"), CheckResult("n/a", None, "-", "-", "routing")]
    checks += [CheckResult(f"bad {kind}", False, "x", "y", kind) for kind in failed_kinds]
    return GateResult("mm_case", checks)


@pytest.mark.parametrize("control", [False, True])
def test_all_passing(control: bool) -> None:
    result().assert_verdict(control=control)  # a control that passes is left to strict xfail (XPASS = failure)


def test_routing_failure_is_an_assertion() -> None:
    for control in (False, True):
        with pytest.raises(AssertionError, match=r"\[FAIL\] \(routing\) bad routing"):
            result("routing", "config").assert_verdict(control=control)


def test_health_failure_is_never_a_verdict() -> None:
    for control in (False, True):
        with pytest.raises(GateBroken, match="bad health"):
            result("health", "routing").assert_verdict(control=control)


@pytest.mark.parametrize("kinds", [("config",), ("metrics",), ("config", "metrics")])
def test_control_failing_only_outside_routing_is_broken(kinds: tuple[str, ...]) -> None:
    with pytest.raises(GateBroken, match="not on routing"):
        result(*kinds).assert_verdict(control=True)
    with pytest.raises(AssertionError):
        result(*kinds).assert_verdict(control=False)


def test_unknown_kind_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        CheckResult("x", True, "-", "-", "vibes")
